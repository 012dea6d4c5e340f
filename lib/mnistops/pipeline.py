"""The order of the training pipeline's stages, in one place.

load → validate → split → (run starts) → fit → evaluate → log model → metrics and artifacts.

The tracking store is checked before any download, so an unreachable store costs little and
leaves nothing behind (data already on disk is read meanwhile, on a second thread). The data
is loaded and validated before the run starts (a bad dataset creates no run); from the moment
the run starts, :func:`mnistops.tracking.store.tracked_run` guarantees it ends FINISHED, FAILED or
KILLED, with what was logged before kept.

Only the held-out rows are kept once the training features are made. A forest scores them as
it grows (its accuracy after each batch of trees is a step metric) and packs each batch as
soon as it is scored, so evaluation has its probabilities at hand when the fit ends.
"""

from __future__ import annotations

import logging
import resource
import tempfile
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

import mnistops
from mnistops import gc_phases, processes
from mnistops.config import Config, dump_yaml
from mnistops.data.dataset import Dataset, to_features
from mnistops.progress import NullReporter, Reporter
from mnistops.tracking import provenance, store

log = logging.getLogger(__name__)

HEADLINE = ("accuracy", "f1_macro", "f1_weighted", "log_loss")


@dataclass
class TrainResult:
    """What ``mnistops train --json`` prints."""

    run_id: str
    experiment: str
    model_uri: str
    metrics: dict[str, float]
    data_fingerprint: str
    split_fingerprint: str
    config_hash: str
    durations: dict[str, float]
    tracking_uri: str
    cached: bool = False
    model_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready result."""
        return asdict(self)


class _Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.durations: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        log.info("stage %s started", name)
        try:
            yield
        finally:
            self.durations[f"time_{name}_s"] = round(time.perf_counter() - t0, 4)
            log.info("stage %s took %.2f s (peak RSS %.0f MiB)", name, self.durations[f"time_{name}_s"], peak_rss_mb())

    def total(self) -> float:
        return round(time.perf_counter() - self.start, 4)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_tags(
    cfg: Config, ds: Dataset, split_fp: str, env: dict[str, Any], code: dict[str, provenance.GitInfo]
) -> dict[str, str]:
    """Tags that trace a run to its code, data, config and environment."""
    tags = {
        "mnistops.run_type": "train",
        "mnistops.version": mnistops.__version__,
        "mnistops.config_hash": cfg.hash(),
        "mnistops.data_fingerprint": ds.fingerprint,
        "mnistops.split_fingerprint": split_fp,
        "mnistops.data.dataset": ds.name,
        "mnistops.model": cfg.model.name,
        "mnistops.env_hash": provenance.environment_hash(env),
        "env.python": env["python"],
        "env.os": env["os"],
        "env.machine": env["machine"],
        "env.cpu_count": str(env["cpu_count"]),
    }
    tags.update({f"env.pkg.{k}": v for k, v in env["packages"].items()})
    for role, info in code.items():
        tags.update(info.tags(f"git.{role}"))
    if "git.code.commit" in tags:
        tags["mlflow.source.git.commit"] = tags["git.code.commit"]
    return tags


def pip_requirements(kind: str, dists: dict[str, tuple[str, str]] | None = None) -> list[str]:
    """What the logged model needs to load: pinned to the versions it was trained with."""
    names = ["mlflow", "numpy", "pandas"] + (["scikit-learn", "joblib", "scipy"] if kind == "sklearn" else ["torch"])
    versions = provenance.package_versions(tuple(names), dists)
    return [f"{n}=={v}" for n, v in versions.items()]


def cache_key(
    cfg: Config, ds: Dataset, split_fp: str, env: dict[str, Any], code: dict[str, provenance.GitInfo]
) -> dict[str, str] | None:
    """The run-cache key (tags a matching run must carry), or None when the code is dirty."""
    key = {
        "mnistops.data_fingerprint": ds.fingerprint,
        "mnistops.split_fingerprint": split_fp,
        "mnistops.config_hash": cfg.hash(),
        "mnistops.env_hash": provenance.environment_hash(env),
    }
    if "code" in code:
        if code["code"].dirty:
            return None
        key["git.code.commit"] = code["code"].commit
    return key


def result_from_run(run: Any, uri: str) -> TrainResult:
    """Rebuild a run's :class:`TrainResult` from its record (for cache hits)."""
    from mnistops.tracking.runs import model_uri_of

    metrics = dict(run.data.metrics)
    tags = run.data.tags
    return TrainResult(
        run_id=run.info.run_id,
        experiment=tags.get("mnistops.experiment", ""),
        model_uri=model_uri_of(run),
        metrics=metrics,
        data_fingerprint=tags.get("mnistops.data_fingerprint", ""),
        split_fingerprint=tags.get("mnistops.split_fingerprint", ""),
        config_hash=tags.get("mnistops.config_hash", ""),
        durations={k: v for k, v in metrics.items() if k.startswith("time_")},
        tracking_uri=uri,
        cached=True,
        model_version=tags.get("mnistops.model_version"),
    )


def train(
    cfg: Config,
    progress: Reporter | None = None,
    force: bool = False,
    register: bool = True,
    extra_tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
    data_cache: dict[tuple[Any, ...], Any] | None = None,
) -> TrainResult:
    """Run the whole pipeline for ``cfg`` and record it in MLflow; return the result.

    Args:
        cfg: the resolved config.
        progress: shows progress bars.
        force: train even when the run cache holds a matching run.
        register: register the model as a new version of ``tracking.registered_model``.
        extra_tags: more run tags (a reproduction names its original).
        parent_run_id: a run (a notebook batch, say) to nest this run under; the result's run id
            is recorded on it as the tag ``mnistops.training_run_id``, cache hits included.
    """
    # The run's log starts now, before the run exists: loading the data and checking the store
    # are in it too. A cache hit, or a failure before the run starts, leaves nothing behind.
    run_log = store.RunLog()
    try:
        return _train(cfg, progress or NullReporter(), force, register, extra_tags, parent_run_id, run_log, data_cache)
    finally:
        run_log.remove()


def data_key(cfg: Config) -> tuple[Any, ...]:
    """What the prepared data depends on: the dataset, its source, the split and the seed."""
    return (cfg.data.dataset, cfg.data.source, cfg.split.strategy, cfg.split.test_size, cfg.seed)


def _train(
    cfg: Config,
    progress: Reporter,
    force: bool,
    register: bool,
    extra_tags: dict[str, str] | None,
    parent_run_id: str | None,
    run_log: store.RunLog,
    data_cache: dict[tuple[Any, ...], Any] | None = None,
) -> TrainResult:
    from mnistops.data import sources
    from mnistops.data.split import Split, make_split
    from mnistops.data.validate import validate
    from mnistops.train.models import build_model

    timer = _Timer()
    uri = store.resolve_uri(cfg.tracking.uri)
    log.info(
        "mnistops %s train: %s on %s, config %s, seed %d; store %s",
        mnistops.__version__,
        cfg.model.name,
        cfg.data.dataset,
        cfg.hash()[:12],
        cfg.seed,
        uri,
    )

    def prepare_data() -> tuple[Dataset, dict[str, Any], Split, np.ndarray, dict[str, np.ndarray]]:
        with timer.stage("load"):
            ds = sources.load(cfg.data.dataset, source=cfg.data.source, progress=progress)
        log.info(
            "data %s: %d images from %s%s, fingerprint %s",
            ds.name,
            ds.n_samples,
            "the cache" if ds.from_cache else ds.source,
            f" ({ds.cache_path})" if ds.cache_path else "",
            ds.fingerprint,
        )
        with timer.stage("validate"):
            report = validate(ds)
        log.info(
            "validation passed with %d warning(s)%s",
            len(report["warnings"]),
            "".join(f"; {w}" for w in report["warnings"]),
        )
        with timer.stage("split"):
            split = make_split(ds, cfg.split.strategy, cfg.split.test_size, cfg.seed)
        log.info(
            "split %s: train %d, test %d, fingerprint %s",
            split.strategy,
            len(split.train),
            len(split.test),
            split.fingerprint,
        )
        with timer.stage("reference"):
            from mnistops.monitor.reference import input_profile

            profile = input_profile(ds.images[split.train], ds.labels[split.train], cfg.seed)
        return ds, report, split, ds.features(split.train), profile

    if data_cache is not None and data_key(cfg) in data_cache:
        log.info("data reused: this process prepared the same data, split and seed for an earlier run")
        store.check_store(uri, timeout=cfg.tracking.timeout)
        model = build_model(cfg.model.name, cfg.model.params, cfg.model.preprocess, cfg.seed)
        ds, report, split, x_train, profile = data_cache[data_key(cfg)]
    elif sources.is_local(cfg.data.dataset):
        # Reading, hashing and converting the data (numpy and hashlib, mostly outside the GIL)
        # overlaps importing MLflow and scikit-learn (Python, under the GIL): on two cores that
        # hides the data stages. A download is not started before the store has answered.
        with ThreadPoolExecutor(1, thread_name_prefix="mnistops-data") as pool:
            prepared = pool.submit(prepare_data)
            store.check_store(uri, timeout=cfg.tracking.timeout)
            model = build_model(cfg.model.name, cfg.model.params, cfg.model.preprocess, cfg.seed)
            ds, report, split, x_train, profile = prepared.result()
            del prepared  # it holds x_train, which is dropped after the fit
    else:
        store.check_store(uri, timeout=cfg.tracking.timeout)
        model = build_model(cfg.model.name, cfg.model.params, cfg.model.preprocess, cfg.seed)
        ds, report, split, x_train, profile = prepare_data()
    if data_cache is not None:
        data_cache[data_key(cfg)] = (ds, report, split, x_train, profile)

    dists = provenance.installed()
    env = provenance.environment(dists)
    code = provenance.code_versions()
    # The device a model trains on (the CNN: cpu or cuda, the GPU's name, CUDA and cuDNN versions).
    tags = {**run_tags(cfg, ds, split.fingerprint, env, code), **getattr(model, "tags", {}), **(extra_tags or {})}
    tags["mnistops.experiment"] = cfg.tracking.experiment
    if parent_run_id:
        store.get_run(uri, parent_run_id)  # a one-line error now, not an orphan run later
        tags["mlflow.parentRunId"] = parent_run_id
    key = cache_key(cfg, ds, split.fingerprint, env, code)
    if not force and key is not None:
        from mnistops.tracking.runs import find_cached

        hit = find_cached(uri, cfg.tracking.experiment, key)
        if hit is not None:
            log.info("run cache hit: run %s has the same data, split, config, code and environment", hit.info.run_id)
            if parent_run_id:
                _record_on_parent(uri, parent_run_id, hit.info.run_id, cached=True)
            return result_from_run(hit, uri)
    elif key is None:
        log.info("the mnistops source tree is dirty: the run cache is not used")
    with store.tracked_run(uri, cfg.tracking.experiment, cfg.tracking.run_name, tags, run_log) as run:
        run_id = run.info.run_id
        log.info("run %s: %s on %s (%s)", run_id, cfg.model.name, ds.name, ds.fingerprint[:12])
        _log_inputs(cfg, ds, split, report, env, code, provenance.environment_lock(dists))
        y_train = ds.labels[split.train]
        held_out = _HeldOut(split.test, ds.images[split.test], ds.labels[split.test], ds.class_names)
        fingerprint = ds.fingerprint
        del ds  # from here on only the held-out rows are needed: let the full images go
        gc_phases.resume()  # start-up is over (see gc_phases)

        with timer.stage("fit"):
            model.fit(x_train, y_train, progress, on_epoch=_log_epoch, held_out=(held_out.images, held_out.labels))
        del x_train

        with timer.stage("evaluate"), ThreadPoolExecutor(1, thread_name_prefix="mnistops-warm") as pool:
            # Imports for plotting and model logging (Python, under the GIL) overlap prediction
            # where there is one left to do (compiled code, outside the GIL).
            warm = pool.submit(_prepare_outputs)
            result = _evaluate_and_plot(model, held_out, warm)
        with timer.stage("log_model"), processes.temporary_directory("model") as tmp:
            model.save(Path(tmp) / "model")
            info = store.log_model(
                Path(tmp) / "model", to_features(held_out.images[:5]), pip_requirements(model.kind, dists)
            )
        durations = {**timer.durations, "time_total_s": timer.total()}
        metrics = {**result.metrics, **durations, "peak_rss_mb": round(peak_rss_mb(), 1)}
        log.info(
            "accuracy %.4f, macro F1 %.4f, log loss %.4f; model %s",
            metrics["accuracy"],
            metrics["f1_macro"],
            metrics["log_loss"],
            info.model_uri,
        )
        _log_metrics(metrics)
        _log_outputs(result, metrics, profile)
        version = None
        if register:
            from mnistops.lifecycle.registry import register as register_version

            version = register_version(uri, cfg.tracking.registered_model, info.model_uri, run_id, tags, metrics)
            log.info("registered %s version %s", cfg.tracking.registered_model, version)
            _set_tag("mnistops.model_version", version)
            _set_tag("mnistops.registered_model", cfg.tracking.registered_model)
    if parent_run_id:
        _record_on_parent(uri, parent_run_id, run_id, cached=False)

    return TrainResult(
        run_id=run_id,
        experiment=cfg.tracking.experiment,
        model_uri=info.model_uri,
        metrics=metrics,
        data_fingerprint=fingerprint,
        split_fingerprint=split.fingerprint,
        config_hash=cfg.hash(),
        durations=durations,
        tracking_uri=uri,
        model_version=version,
    )


def _record_on_parent(uri: str, parent_run_id: str, run_id: str, cached: bool) -> None:
    c = store.client(uri)
    c.set_tag(parent_run_id, "mnistops.training_run_id", run_id)
    c.set_tag(parent_run_id, "mnistops.training_cached", str(cached).lower())


def _set_tag(key: str, value: str) -> None:
    import mlflow

    mlflow.set_tag(key, value)


def _log_epoch(step: int, values: dict[str, float]) -> None:
    import mlflow

    mlflow.log_metrics(values, step=step)


def _log_inputs(
    cfg: Config,
    ds: Dataset,
    split: Any,
    report: dict[str, Any],
    env: dict[str, Any],
    code: dict[str, provenance.GitInfo],
    lock: str,
) -> None:
    """Everything known before fitting: logged first, so a failed run still shows it."""
    import mlflow
    from mlflow.data.numpy_dataset import from_numpy

    # serve.* is how a model is served later (and may hold a token): not a parameter of the run.
    params = {k: ("None" if v is None else v) for k, v in cfg.flat().items() if not k.startswith("serve.")}
    mlflow.log_params(params)
    with warnings.catch_warnings():
        # MLflow registers its local-file source twice and warns that a path is ambiguous.
        warnings.simplefilter("ignore", UserWarning)
        dataset = from_numpy(
            ds.images,
            targets=ds.labels,
            source=ds.cache_path or ds.source,
            name=ds.name,
            # MLflow caps digests at 36 characters; the full fingerprint is in the tags.
            digest=ds.fingerprint[:36],
        )
    store.log_dataset(
        dataset,
        context="training",
        tags={
            "fingerprint": ds.fingerprint,
            "split_fingerprint": split.fingerprint,
            "split_strategy": split.strategy,
            "origin": ds.source,
        },
    )
    mlflow.log_text(dump_yaml(cfg), "config.yaml")
    mlflow.log_text(lock, "environment/requirements.lock.txt")
    mlflow.log_dict(env, "environment/environment.json")
    mlflow.log_dict(report, "data/validation.json")
    mlflow.log_dict(
        {
            "strategy": split.strategy,
            "n_train": len(split.train),
            "n_test": len(split.test),
            "fingerprint": split.fingerprint,
        },
        "data/split.json",
    )
    for role, info in code.items():
        if info.dirty:
            mlflow.log_text(info.diff, f"code/{role}.diff")


@dataclass
class _Scored:
    metrics: dict[str, float]
    evaluation: Any
    test_rows: np.ndarray
    figures: dict[str, Path]
    tmp: tempfile.TemporaryDirectory[str]


@dataclass
class _HeldOut:
    """The test rows of the split: all that evaluation needs of the dataset."""

    rows: np.ndarray
    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]


def _prepare_outputs() -> None:
    import mnistops.evaluate.plots  # noqa: F401  (matplotlib)

    store.prepare_model_logging()


def _evaluate_and_plot(model: Any, held_out: _HeldOut, warm: Future[None]) -> _Scored:
    from mnistops.evaluate.metrics import confident_mistakes, evaluate

    y_test, names = held_out.labels, held_out.class_names
    # A forest scored the held-out rows while it grew (the same numbers predict_proba gives).
    proba = model.held_out_proba
    if proba is None:
        proba = model.predict_proba(to_features(held_out.images))
    ev = evaluate(y_test, proba, names)
    warm.result()
    from mnistops.evaluate import plots

    tmp = processes.temporary_directory("plots")
    out = Path(tmp.name)
    figures = {
        "plots/confusion_matrix.png": plots.confusion_matrix_png(ev.confusion, names, out / "confusion_matrix.png"),
        "plots/confident_mistakes.png": plots.mistakes_png(
            held_out.images, y_test, proba, confident_mistakes(y_test, proba), names, out / "confident_mistakes.png"
        ),
    }
    return _Scored(ev.metrics, ev, held_out.rows, figures, tmp)


def _log_metrics(metrics: dict[str, float]) -> None:
    import mlflow

    mlflow.log_metrics(metrics)


def _log_outputs(scored: _Scored, metrics: dict[str, float], profile: dict[str, np.ndarray]) -> None:
    import mlflow

    from mnistops.monitor import reference

    ev = scored.evaluation
    mlflow.log_dict({**ev.to_dict(), "metrics": metrics}, "metrics.json")
    mlflow.log_dict({"labels": list(range(10)), "matrix": ev.confusion}, "confusion_matrix.json")
    mlflow.log_text(ev.report, "classification_report.txt")
    for artifact_path, path in scored.figures.items():
        mlflow.log_artifact(str(path), str(Path(artifact_path).parent))
    with processes.temporary_directory("predictions") as tmp:
        pred = Path(tmp) / "predictions.npz"
        np.savez_compressed(pred, rows=scored.test_rows, label=ev.predictions, proba=ev.proba)
        mlflow.log_artifact(str(pred), "predictions")
        # What `mnistops monitor` compares the served model's inputs and answers with.
        ref = Path(tmp) / Path(reference.ARTIFACT).name
        ref.write_bytes(reference.complete(profile, ev.proba).to_bytes())
        mlflow.log_artifact(str(ref), str(Path(reference.ARTIFACT).parent))
    scored.tmp.cleanup()
