"""The training pipeline, in the order of its stages (:func:`train`).

load, validate, split, profile → (run starts) → log inputs → fit → evaluate → log the model →
log the outputs → register.

The store is checked before any download, so an unreachable store costs little and leaves
nothing behind; the data is loaded and validated before the run starts (a bad dataset creates
no run). From the moment the run starts, :func:`mnistops.tracking.store.tracked_run` guarantees
it ends FINISHED, FAILED or KILLED, with what was logged before kept. The stages are in
:mod:`~mnistops.pipeline.steps`; what makes them fast, in :mod:`~mnistops.pipeline.speedups`.
"""

from __future__ import annotations

from typing import Any

from mnistops import record
from mnistops.config import Config
from mnistops.pipeline import speedups, steps
from mnistops.pipeline.speedups import data_key
from mnistops.pipeline.steps import TrainResult, pip_requirements
from mnistops.progress import NullReporter, Reporter
from mnistops.tracking import store

__all__ = ["TrainResult", "data_key", "pip_requirements", "train"]


def train(
    cfg: Config,
    progress: Reporter | None = None,
    force: bool = False,
    register: bool = True,
    extra_tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
    data_cache: speedups.DataCache | None = None,
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
        data_cache: prepared data kept between the trainings of one process (a sweep's worker).
    """
    progress, uri, timer = progress or NullReporter(), store.resolve_uri(cfg.tracking.uri), steps.Timer()
    run_log = store.RunLog()  # the run's log starts now: loading the data and the store are in it
    try:
        steps.announce(cfg, uri)
        data, model = speedups.prepare_while_store_opens(cfg, uri, progress, timer, data_cache)
        prov = steps.Provenance.now()
        tags = steps.all_tags(cfg, data, prov, model, extra_tags or {})
        if parent_run_id:
            store.get_run(uri, parent_run_id)  # a one-line error now, not an orphan run later
            tags[record.PARENT_RUN_ID] = parent_run_id
        result = None if force else steps.cached_run(cfg, uri, data, prov)
        if result is None:
            result = _run(cfg, uri, data, model, prov, tags, timer, progress, register, run_log)
        if parent_run_id:
            steps.record_on_parent(uri, parent_run_id, result.run_id, cached=result.cached)
        return result
    finally:
        run_log.remove()


def _run(
    cfg: Config,
    uri: str,
    data: steps.Prepared,
    model: Any,
    prov: steps.Provenance,
    tags: dict[str, str],
    timer: steps.Timer,
    progress: Reporter,
    register: bool,
    run_log: store.RunLog,
) -> TrainResult:
    """The tracked run: from its inputs to its registered model."""
    with store.tracked_run(uri, cfg.tracking.experiment, cfg.tracking.run_name, tags, run_log) as run:
        steps.log_inputs(cfg, data, prov, run.info.run_id)
        x_train, y_train = data.release()  # from here on only the held-out rows are kept
        speedups.start_up_over()
        with timer.stage("fit"):
            steps.fit(model, x_train, y_train, data.held_out, progress)
        del x_train, y_train
        with timer.stage("evaluate"):
            scored = speedups.evaluate_while_warming(model, data.held_out)
        with timer.stage("log_model"):
            info = steps.log_model(model, data.held_out, prov)
        metrics = steps.log_outputs(scored, info, timer, data.profile)
        version = steps.register(cfg, uri, run.info.run_id, info.model_uri, tags, metrics) if register else None
    return TrainResult(
        run_id=run.info.run_id,
        experiment=cfg.tracking.experiment,
        model_uri=info.model_uri,
        metrics=metrics,
        data_fingerprint=data.fingerprint,
        split_fingerprint=data.split.fingerprint,
        config_hash=cfg.hash(),
        durations={k: v for k, v in metrics.items() if k.startswith("time_")},
        tracking_uri=uri,
        model_version=version,
    )
