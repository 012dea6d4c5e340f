"""The training pipeline's stages, each a function of its explicit inputs (the order lives in
:func:`mnistops.pipeline.train`; the speed machinery in :mod:`mnistops.pipeline.speedups`)."""

from __future__ import annotations

import logging
import resource
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

import mnistops
from mnistops import processes, record
from mnistops.config import Config, dump_yaml
from mnistops.data.dataset import Dataset, to_features
from mnistops.progress import Reporter
from mnistops.tracking import provenance, store
from mnistops.train import mlflow_model

log = logging.getLogger(__name__)


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


class Timer:
    """Each stage's wall time (``time_<stage>_s``), logged with the peak memory as it ends."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.durations: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the stage ``name``."""
        t0 = time.perf_counter()
        log.info("stage %s started", name)
        try:
            yield
        finally:
            self.durations[f"time_{name}_s"] = round(time.perf_counter() - t0, 4)
            log.info("stage %s took %.2f s (peak RSS %.0f MiB)", name, self.durations[f"time_{name}_s"], peak_rss_mb())

    def total(self) -> dict[str, float]:
        """Every stage's time and ``time_total_s``."""
        return {**self.durations, "time_total_s": round(time.perf_counter() - self.start, 4)}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class HeldOut:
    """The test rows of the split: all that evaluation needs of the dataset."""

    rows: np.ndarray
    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]


@dataclass
class Prepared:
    """The data, checked and split, and what training needs of it.

    ``x_train`` (``float32 (n, 784)``) and ``held_out`` are all the later stages keep: the full
    images go once the run has logged its inputs (:meth:`release`)."""

    ds: Dataset | None
    report: dict[str, Any]
    split: Any
    x_train: np.ndarray
    y_train: np.ndarray
    held_out: HeldOut
    profile: dict[str, np.ndarray]
    fingerprint: str

    def release(self) -> tuple[np.ndarray, np.ndarray]:
        """The training features and labels, handed over: from here on this holds only the
        held-out rows (the full images, 55 MB for MNIST, are not kept through the fit)."""
        x, y = self.x_train, self.y_train
        self.ds, self.x_train, self.y_train = None, np.empty((0, 784), np.float32), np.empty(0, np.uint8)
        return x, y


def announce(cfg: Config, uri: str) -> None:
    """The run log's first line: what is trained, on what, into which store."""
    log.info(
        "mnistops %s train: %s on %s, config %s, seed %d; store %s",
        mnistops.__version__,
        cfg.model.name,
        cfg.data.dataset,
        cfg.hash()[:12],
        cfg.seed,
        uri,
    )


def prepare_data(cfg: Config, progress: Reporter, timer: Timer) -> Prepared:
    """Load, validate and split the dataset, and profile the training images for monitoring."""
    from mnistops.data import extras
    from mnistops.data.split import make_split
    from mnistops.data.validate import validate
    from mnistops.evaluate.reference import input_profile

    with timer.stage("load"):
        ds = extras.load(cfg.data, progress)
    where = "the cache" if ds.from_cache else ds.source
    cached = f" ({ds.cache_path})" if ds.cache_path else ""
    log.info("data %s: %d images from %s%s, fingerprint %s", ds.name, ds.n_samples, where, cached, ds.fingerprint)
    with timer.stage("validate"):
        report = validate(ds)
    log.info(
        "validation passed with %d warning(s)%s", len(report["warnings"]), "".join(f"; {w}" for w in report["warnings"])
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
        profile = input_profile(ds.images[split.train], ds.labels[split.train], cfg.seed)
    held_out = HeldOut(split.test, ds.images[split.test], ds.labels[split.test], ds.class_names)
    return Prepared(
        ds, report, split, ds.features(split.train), ds.labels[split.train], held_out, profile, ds.fingerprint
    )


def open_store(uri: str, cfg: Config) -> None:
    """Check the store (a one-line error if it cannot be used) and end what dead processes left."""
    from mnistops.tracking import housekeeping

    store.check_store(uri, timeout=cfg.tracking.timeout)
    housekeeping.tidy(uri)


def build_model(cfg: Config) -> Any:
    """The model the config names, unfitted (:mod:`mnistops.train.models`)."""
    from mnistops.train.models import build_model as build

    return build(cfg.model.name, cfg.model.params, cfg.model.preprocess, cfg.seed)


@dataclass
class Provenance:
    """Where the run comes from: installed packages, the environment, the code's git state."""

    dists: dict[str, tuple[str, str]]
    env: dict[str, Any]
    code: dict[str, provenance.GitInfo]

    @classmethod
    def now(cls) -> Provenance:
        """This process's."""
        dists = provenance.installed()
        return cls(dists, provenance.environment(dists), provenance.code_versions())


def run_tags(
    cfg: Config, ds: Any, split_fp: str, env: dict[str, Any], code: dict[str, provenance.GitInfo]
) -> dict[str, str]:
    """Tags that trace a run to its code, data, config and environment."""
    return {
        record.RUN_TYPE: "train",
        record.CONFIG_HASH: cfg.hash(),
        record.DATA_FINGERPRINT: ds.fingerprint,
        record.SPLIT_FINGERPRINT: split_fp,
        record.DATASET: ds.name,
        record.MODEL: cfg.model.name,
        **provenance.tags(env, code),
        **parent_tags(ds),
    }


def parent_tags(ds: Dataset) -> dict[str, str]:
    """A dataset joined by feedback sets names its parents (:mod:`mnistops.data.extras`)."""
    from mnistops.data import extras

    return (
        {record.DATA_BASE_FINGERPRINT: extras.base_fingerprint(ds), record.DATA_PARENTS: ds.parents}
        if ds.parents
        else {}
    )


def all_tags(cfg: Config, data: Prepared, prov: Provenance, model: Any, extra: dict[str, str]) -> dict[str, str]:
    """The run's tags: :func:`run_tags`, the model's own (the CNN's device), ``extra``."""
    tags = {**run_tags(cfg, data.ds, data.split.fingerprint, prov.env, prov.code), **getattr(model, "tags", {})}
    return {**tags, **extra, record.EXPERIMENT: cfg.tracking.experiment}


def cache_key(
    cfg: Config, ds: Any, split_fp: str, env: dict[str, Any], code: dict[str, provenance.GitInfo]
) -> dict[str, str] | None:
    """The run-cache key (tags a matching run must carry), or None when the code is dirty."""
    key = {
        record.DATA_FINGERPRINT: ds.fingerprint,
        record.SPLIT_FINGERPRINT: split_fp,
        record.CONFIG_HASH: cfg.hash(),
        record.ENV_HASH: provenance.environment_hash(env),
    }
    if "code" in code:
        if code["code"].dirty:
            return None
        key[record.GIT_CODE_COMMIT] = code["code"].commit
    return key


def cached_run(cfg: Config, uri: str, data: Prepared, prov: Provenance) -> TrainResult | None:
    """The result of a FINISHED run with the same data, split, config, code and environment."""
    from mnistops.tracking.runs import find_cached

    key = cache_key(cfg, data.ds, data.split.fingerprint, prov.env, prov.code)
    if key is None:
        log.info("the mnistops source tree is dirty: the run cache is not used")
        return None
    hit = find_cached(uri, cfg.tracking.experiment, key)
    if hit is None:
        return None
    log.info("run cache hit: run %s has the same data, split, config, code and environment", hit.info.run_id)
    return result_from_run(hit, uri)


def result_from_run(run: Any, uri: str) -> TrainResult:
    """Rebuild a run's :class:`TrainResult` from its record (for cache hits)."""
    from mnistops.tracking.runs import model_uri_of

    metrics = dict(run.data.metrics)
    tags = run.data.tags
    return TrainResult(
        run_id=run.info.run_id,
        experiment=tags.get(record.EXPERIMENT, ""),
        model_uri=model_uri_of(run),
        metrics=metrics,
        data_fingerprint=tags.get(record.DATA_FINGERPRINT, ""),
        split_fingerprint=tags.get(record.SPLIT_FINGERPRINT, ""),
        config_hash=tags.get(record.CONFIG_HASH, ""),
        durations={k: v for k, v in metrics.items() if k.startswith("time_")},
        tracking_uri=uri,
        cached=True,
        model_version=tags.get(record.MODEL_VERSION),
    )


def record_on_parent(uri: str, parent_run_id: str, run_id: str, cached: bool) -> None:
    """Name the training run on the run it is nested under (a notebook batch)."""
    c = store.client(uri)
    c.set_tag(parent_run_id, record.TRAINING_RUN_ID, run_id)
    c.set_tag(parent_run_id, record.TRAINING_CACHED, str(cached).lower())


def log_inputs(cfg: Config, data: Prepared, prov: Provenance, run_id: str) -> None:
    """Everything known before fitting: logged first, so a failed run still shows it."""
    import mlflow
    from mlflow.data.numpy_dataset import from_numpy

    ds, split = data.ds, data.split
    assert ds is not None, "log the inputs before releasing the data"
    log.info("run %s: %s on %s (%s)", run_id, cfg.model.name, ds.name, ds.fingerprint[:12])
    # serve.* is how a model is served later (and may hold a token): not a parameter of the run.
    mlflow.log_params({k: ("None" if v is None else v) for k, v in cfg.flat().items() if not k.startswith("serve.")})
    with warnings.catch_warnings():
        # MLflow registers its local-file source twice and warns that a path is ambiguous.
        warnings.simplefilter("ignore", UserWarning)
        # MLflow caps digests at 36 characters; the full fingerprint is in the tags.
        source, digest = ds.cache_path or ds.source, ds.fingerprint[:36]
        dataset = from_numpy(ds.images, targets=ds.labels, source=source, name=ds.name, digest=digest)
    origin = {"fingerprint": ds.fingerprint, "split_fingerprint": split.fingerprint, "split_strategy": split.strategy}
    store.log_dataset(dataset, context="training", tags={**origin, "origin": ds.source})
    mlflow.log_text(dump_yaml(cfg), record.CONFIG_ARTIFACT)
    mlflow.log_text(provenance.environment_lock(prov.dists), record.ENV_LOCK_ARTIFACT)
    mlflow.log_dict(prov.env, "environment/environment.json")
    mlflow.log_dict(data.report, "data/validation.json")
    shape = {"strategy": split.strategy, "n_train": len(split.train), "n_test": len(split.test)}
    mlflow.log_dict({**shape, "fingerprint": split.fingerprint}, "data/split.json")
    if ds.parents:  # lineage: which served predictions this run learnt from
        from mnistops.data import extras

        mlflow.log_text("\n".join(extras.labeled_ids(cfg.data.extra)) + "\n", record.FEEDBACK_IDS_ARTIFACT)
    for role, info in prov.code.items():
        if info.dirty:
            mlflow.log_text(info.diff, f"code/{role}.diff")


def fit(model: Any, x: np.ndarray, y: np.ndarray, held_out: HeldOut, progress: Reporter) -> None:
    """Fit; a model that scores the held-out rows as it grows logs its accuracy per step."""
    model.fit(x, y, progress, on_epoch=_log_epoch, held_out=(held_out.images, held_out.labels))


def _log_epoch(step: int, values: dict[str, float]) -> None:
    import mlflow

    mlflow.log_metrics(values, step=step)


@dataclass
class Scored:
    """The model's held-out metrics, its evaluation, and the figures drawn of it."""

    metrics: dict[str, float]
    evaluation: Any
    test_rows: np.ndarray
    test_labels: np.ndarray
    figures: dict[str, Path]
    tmp: tempfile.TemporaryDirectory[str]


def evaluate(model: Any, held_out: HeldOut) -> Scored:
    """Metrics on the held-out rows and the run's two figures."""
    from mnistops.evaluate.metrics import confident_mistakes
    from mnistops.evaluate.metrics import evaluate as metrics_of

    y_test, names = held_out.labels, held_out.class_names
    # A forest scored the held-out rows while it grew (the same numbers predict_proba gives).
    proba = model.held_out_proba
    if proba is None:
        proba = model.predict_proba(to_features(held_out.images))
    ev = metrics_of(y_test, proba, names)
    from mnistops.evaluate import plots  # matplotlib: after the prediction (see speedups.warm_outputs)

    tmp = processes.temporary_directory("plots")
    out = Path(tmp.name)
    mistakes = confident_mistakes(y_test, proba)
    figures = {
        "plots/confusion_matrix.png": plots.confusion_matrix_png(ev.confusion, names, out / "confusion_matrix.png"),
        "plots/confident_mistakes.png": plots.mistakes_png(
            held_out.images, y_test, proba, mistakes, names, out / "confident_mistakes.png"
        ),
    }
    return Scored(ev.metrics, ev, held_out.rows, y_test, figures, tmp)


def pip_requirements(kind: str, dists: dict[str, tuple[str, str]] | None = None) -> list[str]:
    """What the logged model needs to load: pinned to the versions it was trained with."""
    names = ["mlflow", "numpy", "pandas"] + (["scikit-learn", "joblib", "scipy"] if kind == "sklearn" else ["torch"])
    versions = provenance.package_versions(tuple(names), dists)
    return [f"{n}=={v}" for n, v in versions.items()]


def log_model(model: Any, held_out: HeldOut, prov: Provenance) -> Any:
    """Save the model and log it as an MLflow pyfunc model (:mod:`mnistops.train.mlflow_model`)."""
    with processes.temporary_directory("model") as tmp:
        model.save(Path(tmp) / "model")
        example = to_features(held_out.images[:5])
        return mlflow_model.log_model(Path(tmp) / "model", example, pip_requirements(model.kind, prov.dists))


def log_outputs(scored: Scored, info: Any, timer: Timer, profile: dict[str, np.ndarray]) -> dict[str, float]:
    """The metrics (quality, stage times, memory), the evaluation's files, the predictions and the
    monitoring reference; the metrics logged."""
    import mlflow

    from mnistops.evaluate import reference

    metrics = {**scored.metrics, **timer.total(), "peak_rss_mb": round(peak_rss_mb(), 1)}
    m = metrics
    log.info(
        "accuracy %.4f, macro F1 %.4f, log loss %.4f; model %s",
        m["accuracy"],
        m["f1_macro"],
        m["log_loss"],
        info.model_uri,
    )
    mlflow.log_metrics(metrics)
    ev = scored.evaluation
    mlflow.log_dict({**ev.to_dict(), "metrics": metrics}, "metrics.json")
    mlflow.log_dict({"labels": list(range(10)), "matrix": ev.confusion}, "confusion_matrix.json")
    mlflow.log_text(ev.report, "classification_report.txt")
    for artifact_path, path in scored.figures.items():
        mlflow.log_artifact(str(path), str(Path(artifact_path).parent))
    with processes.temporary_directory("predictions") as tmp:
        pred = Path(tmp) / Path(record.PREDICTIONS_ARTIFACT).name
        np.savez_compressed(pred, rows=scored.test_rows, label=ev.predictions, proba=ev.proba)
        mlflow.log_artifact(str(pred), str(Path(record.PREDICTIONS_ARTIFACT).parent))
        # What `mnistops monitor` compares the served model's inputs and answers with.
        ref = Path(tmp) / Path(record.REFERENCE_ARTIFACT).name
        ref.write_bytes(reference.complete(profile, ev.proba, scored.test_labels).to_bytes())
        mlflow.log_artifact(str(ref), str(Path(record.REFERENCE_ARTIFACT).parent))
    scored.tmp.cleanup()
    return metrics


def register(
    cfg: Config, uri: str, run_id: str, model_uri: str, tags: dict[str, str], metrics: dict[str, float]
) -> str:
    """Register the model as a new version of ``tracking.registered_model``; tag the run with it."""
    import mlflow

    from mnistops.lifecycle.registry import register as register_version

    version = register_version(uri, cfg.tracking.registered_model, model_uri, run_id, tags, metrics)
    log.info("registered %s version %s", cfg.tracking.registered_model, version)
    mlflow.set_tags({record.MODEL_VERSION: version, record.REGISTERED_MODEL: cfg.tracking.registered_model})
    return version
