"""What makes ``mnistops train`` fast, kept out of the stage order (:func:`mnistops.pipeline.train`
says in one line each where it applies). Figures: ``benchmarks/bench_train.py`` on the 2-core
machine (docs/benchmarks.md); each helper says what it buys.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from mnistops import gc_phases
from mnistops.config import Config
from mnistops.data import sources
from mnistops.pipeline import steps
from mnistops.progress import Reporter

log = logging.getLogger(__name__)

T = TypeVar("T")
DataCache = dict[tuple[Any, ...], steps.Prepared]


def data_key(cfg: Config) -> tuple[Any, ...]:
    """What the prepared data depends on: the dataset, its source, the split and the seed."""
    return (cfg.data.dataset, cfg.data.source, cfg.split.strategy, cfg.split.test_size, cfg.seed)


def prepare_while_store_opens(
    cfg: Config, uri: str, progress: Reporter, timer: steps.Timer, cache: DataCache | None
) -> tuple[steps.Prepared, Any]:
    """:func:`steps.prepare_data` beside :func:`steps.open_store` and :func:`steps.build_model`.

    Reading, hashing and converting data on disk (numpy and hashlib, mostly outside the GIL)
    overlaps importing MLflow and scikit-learn (Python, under the GIL): on two cores that hides
    the data stages (about a second of the seed's 37 s). A download is not started before the
    store has answered. A sweep's worker passes ``cache``: a trial on the same data, split and
    seed as an earlier one in the process reuses what that one prepared.
    """
    one_malloc_arena()
    key = data_key(cfg)
    if cache is not None and key in cache:
        log.info("data reused: this process prepared the same data, split and seed for an earlier run")
        steps.open_store(uri, cfg)
        return dataclasses.replace(cache[key]), steps.build_model(cfg)
    if sources.is_local(cfg.data.dataset):
        import_before_threads(DATA_THREAD_IMPORTS)
        data, model = _beside(lambda: steps.prepare_data(cfg, progress, timer), lambda: _store_and_model(cfg, uri))
    else:
        model = _store_and_model(cfg, uri)
        data = steps.prepare_data(cfg, progress, timer)
    if cache is not None:
        cache[key] = dataclasses.replace(data)  # a copy: the run releases its own
    return data, model


def one_malloc_arena() -> None:
    """Have glibc's malloc serve every thread from one arena from now on.

    The data thread (below) builds the monitoring reference: tens of MB of float64 arrays, freed
    at once. By default that thread gets an arena of its own, and what it frees stays resident
    there, unusable by the main thread's fit: the seed's training peaked at 771 MB this way
    against 629 MB with one arena (and 638 MB at 66b8836, before the reference existed), at the
    same wall time (19.8 s and 19.7 s; 2-core Intel Xeon, ``/usr/bin/time``). A no-op where the C
    library is not glibc."""
    import ctypes
    import ctypes.util

    m_arena_max = -8  # glibc's malloc.h
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(m_arena_max, 1)


DATA_THREAD_IMPORTS = (
    "mnistops.data.extras",
    "mnistops.data.split",
    "mnistops.data.validate",
    "mnistops.evaluate.reference",
    "sklearn.model_selection",
    "sklearn.decomposition",
)
EVALUATE_IMPORTS = ("mnistops.evaluate.metrics", "sklearn.metrics")


def import_before_threads(modules: tuple[str, ...]) -> None:
    """Import ``modules`` here, before a second thread starts importing too.

    Two threads importing one package at once (scikit-learn's modules import each other) can
    meet in a circle that Python's import locks break by handing one thread a half-initialised
    module: ``cannot import name 'clone' from partially initialized module 'sklearn.base'``, one
    run in a few hundred. So the modules a worker thread needs are imported before it starts;
    the main thread's imports (MLflow, the model's estimator) then meet none of them half-done.
    Imports hold the GIL, so doing these first costs no wall time: the other thread's work
    overlaps the main thread's remaining imports, as before.
    """
    import importlib

    for name in modules:
        importlib.import_module(name)


def _store_and_model(cfg: Config, uri: str) -> Any:
    steps.open_store(uri, cfg)
    return steps.build_model(cfg)


def _beside(work: Callable[[], T], meanwhile: Callable[[], Any]) -> tuple[T, Any]:
    """``work()`` on a thread while ``meanwhile()`` runs here; both answers."""
    with ThreadPoolExecutor(1, thread_name_prefix="mnistops-data") as pool:
        done: Future[T] = pool.submit(work)
        other = meanwhile()
        return done.result(), other


def start_up_over() -> None:
    """Turn the garbage collector back on, freezing the million objects start-up made, so no
    collection scans them again (:mod:`mnistops.gc_phases`: about 0.4 s of start-up)."""
    gc_phases.resume()


def evaluate_while_warming(model: Any, held_out: steps.HeldOut) -> steps.Scored:
    """:func:`steps.evaluate`, while a thread imports what plotting and model logging need
    (matplotlib, ``mlflow.pyfunc``, MLflow's scan of installed packages): Python imports under
    the GIL overlap the prediction, compiled code outside it (about 1.5 s of a forest's run)."""
    import_before_threads(EVALUATE_IMPORTS)
    with ThreadPoolExecutor(1, thread_name_prefix="mnistops-warm") as pool:
        warm = pool.submit(warm_outputs)
        scored = steps.evaluate(model, held_out)
        warm.result()
        return scored


def warm_outputs() -> None:
    """Import the plots and prepare model logging ahead."""
    import mnistops.evaluate.plots  # noqa: F401  (matplotlib)
    from mnistops.train import mlflow_model

    mlflow_model.prepare_model_logging()
