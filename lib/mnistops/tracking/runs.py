"""Looking at runs: the run cache, ``runs list`` and ``runs compare``.

The run cache keys a training run on everything that decides its result: data fingerprint,
split fingerprint, config hash, the mnistops commit (clean trees only) and the environment hash
(Python and key package versions). A FINISHED run with the same key is returned instead of
training again.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnistops import processes, record
from mnistops.errors import DataError, RunNotFoundError
from mnistops.tracking import store

if TYPE_CHECKING:
    from mnistops.config import Config
    from mnistops.evaluate.analysis import RunPredictions


def is_timing(metric: str) -> bool:
    """Wall times and memory: metrics that no re-run is expected to repeat."""
    return metric.startswith("time_") or metric.endswith("_time_s") or metric == "peak_rss_mb"


def find_cached(uri: str, experiment: str, key: dict[str, str]) -> Any | None:
    """The newest FINISHED run whose tags equal ``key``, or None."""
    c = store.client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return None
    clauses = [f"tags.`{k}` = '{v}'" for k, v in key.items()]
    clauses.append("attributes.status = 'FINISHED'")
    runs = c.search_runs(
        [exp.experiment_id], " and ".join(clauses), order_by=["attributes.start_time DESC"], max_results=5
    )
    for run in runs:
        if record.REPRODUCTION_OF not in run.data.tags:
            return run
    return None


def model_uri_of(run: Any) -> str:
    """The ``models:/`` URI of the model a run logged."""
    outputs = run.outputs.model_outputs if run.outputs else []
    return f"models:/{outputs[-1].model_id}" if outputs else ""


def list_runs(uri: str, experiment: str, model_name: str, limit: int = 20) -> list[dict[str, Any]]:
    """The newest ``limit`` runs of ``experiment`` as rows (JSON-ready)."""
    from datetime import UTC, datetime

    c = store.client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return []
    champion = alias_version(uri, model_name, record.CHAMPION)
    champion_run = champion.run_id if champion is not None else None
    rows = []
    for run in c.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=limit):
        p, m, t = run.data.params, run.data.metrics, run.data.tags
        key_params = {
            k.removeprefix("model.params."): v
            for k, v in p.items()
            if k
            in (
                "model.params.n_estimators",
                "model.params.max_depth",
                "model.params.max_iter",
                "model.params.epochs",
                "model.params.C",
            )
        }
        rows.append(
            {
                "run_id": run.info.run_id,
                "started": datetime.fromtimestamp(run.info.start_time / 1000, UTC).isoformat(timespec="seconds"),
                "status": run.info.status,
                "model": kind if (kind := t.get(record.RUN_TYPE, "train")) != "train" else p.get("model.name", ""),
                "params": key_params,
                "accuracy": m.get("accuracy"),
                "f1_macro": m.get("f1_macro"),
                "data": t.get(record.DATA_FINGERPRINT, "")[:12],
                "champion": run.info.run_id == champion_run,
                "reproduction_of": t.get(record.REPRODUCTION_OF),
                "ended_by": t.get(record.ENDED_BY),
            }
        )
    return rows


def compare_runs(uri: str, run_a: str, run_b: str) -> dict[str, Any]:
    """What differs between two runs: params, metrics (B minus A), data, code, environment."""
    a, b = store.get_run(uri, run_a), store.get_run(uri, run_b)
    pa, pb = a.data.params, b.data.params
    params = {k: {"a": pa.get(k), "b": pb.get(k)} for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)}
    ma, mb = a.data.metrics, b.data.metrics
    metrics = {
        k: {"a": ma[k], "b": mb[k], "delta": mb[k] - ma[k]} for k in sorted(set(ma) & set(mb)) if not is_timing(k)
    }
    ta, tb = a.data.tags, b.data.tags

    def same(key: str) -> dict[str, Any]:
        return {"a": ta.get(key), "b": tb.get(key), "same": ta.get(key) == tb.get(key)}

    env_keys = sorted(k for k in set(ta) | set(tb) if k.startswith("env.pkg.") or k == "env.python")
    return {
        "run_a": run_a,
        "run_b": run_b,
        "params": params,
        "metrics": metrics,
        "data": same(record.DATA_FINGERPRINT),
        "split": same(record.SPLIT_FINGERPRINT),
        "config": same(record.CONFIG_HASH),
        "code": {
            **same(record.GIT_CODE_COMMIT),
            "dirty": [ta.get(record.GIT_CODE_DIRTY), tb.get(record.GIT_CODE_DIRTY)],
        },
        "environment": {
            k.removeprefix("env.pkg."): {"a": ta.get(k), "b": tb.get(k)} for k in env_keys if ta.get(k) != tb.get(k)
        },
    }


# Step metrics a model logs as it learns: a forest after each batch of trees, the CNN per epoch.
CURVES = {"held_out_accuracy": "trees", "val_accuracy": "epoch", "train_loss": "epoch"}


def learning_curve(uri: str, run_id: str) -> Any:
    """A run's step metrics (:data:`CURVES`) as a ``pandas.DataFrame`` indexed by step (trees or
    epoch); empty when the model logs none (a logistic regression, say)."""
    import pandas as pd

    c = store.client(uri)
    columns = {}
    for name in CURVES:
        history = c.get_metric_history(run_id, name)
        if history:
            columns[name] = pd.Series({m.step: m.value for m in history})
    frame = pd.DataFrame(columns).sort_index()
    frame.index.name = next((CURVES[n] for n in columns), "step")
    return frame


def artifact_bytes(uri: str, run_id: str, path: str) -> bytes:
    """The bytes of one of a run's artifacts (a logged plot, say)."""

    import mlflow

    with processes.temporary_directory("artifact") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=path, dst_path=tmp, tracking_uri=uri
            )
        except Exception:
            raise RunNotFoundError(f"run {run_id} has no artifact {path}") from None
        with open(local, "rb") as f:
            return f.read()


def feedback_ids(uri: str, run_id: str) -> set[str]:
    """The ids of the served predictions a run trained on (``data.extra``); none without extras."""
    if record.DATA_PARENTS not in store.get_run(uri, run_id).data.tags:
        return set()
    return set(artifact_bytes(uri, run_id, record.FEEDBACK_IDS_ARTIFACT).decode().split())


def runs_with_tag(uri: str, key: str) -> list[Any]:
    """Every run, in any experiment, that carries the tag ``key``, newest first."""
    c = store.client(uri)
    experiments = [e.experiment_id for e in c.search_experiments()]
    return list(c.search_runs(experiments, f"tags.`{key}` LIKE '%'", order_by=["attributes.start_time DESC"]))


def alias_version(uri: str, name: str, alias: str) -> Any | None:
    """The version behind ``name@alias``, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return store.client(uri).get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def run_config(uri: str, run_id: str) -> Config:
    """The resolved config a run saved (``config.yaml``), read back alone (no env, no overrides)."""

    import mlflow

    from mnistops.config import load_config

    with processes.temporary_directory("config") as tmp:
        mlflow.set_tracking_uri(uri)
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config.yaml", dst_path=tmp)
        except Exception:
            raise RunNotFoundError(
                f"run {run_id} has no saved config.yaml: it was not made by mnistops train"
            ) from None
        return load_config(path, environ={})


def latest_run(uri: str, experiment: str) -> str:
    """The newest FINISHED training run (not a reproduction) of ``experiment``."""
    c = store.client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        raise RunNotFoundError(f"experiment {experiment!r} has no runs in {uri}: run `mnistops train` first")
    runs = c.search_runs(
        [exp.experiment_id], "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"], max_results=20
    )
    for run in runs:
        if is_training_run(run.data.tags):
            return str(run.info.run_id)
    raise RunNotFoundError(f"experiment {experiment!r} has no finished training run: run `mnistops train` first")


def is_training_run(tags: dict[str, str]) -> bool:
    """A run of ``mnistops train`` (not a reproduction, not a notebook batch)."""
    return tags.get(record.RUN_TYPE, "train") == "train" and record.REPRODUCTION_OF not in tags


def last_verdict(tracking_uri: str, name: str, version: str) -> str | None:
    """The verdict of the newest monitoring run that watched ``name`` version ``version``, if any."""
    c = store.client(tracking_uri)
    experiment = c.get_experiment_by_name(record.MONITORING_EXPERIMENT)
    if experiment is None:
        return None
    runs = c.search_runs(
        [experiment.experiment_id],
        max_results=1,
        order_by=["attributes.start_time DESC"],
        filter_string=f"tags.`{record.MONITOR_MODEL}` = '{name}' and "
        f"tags.`{record.MONITOR_MODEL_VERSION}` = '{version}'",
    )
    return str(runs[0].data.tags.get(record.MONITOR_VERDICT)) if runs else None


def run_predictions(uri: str, run_id: str) -> RunPredictions:
    """Read a training run's held-out predictions back, with their images and labels.

    Raises:
        RunNotFoundError: no such run, or it holds no predictions.
        DataError: the dataset it names is no longer the data it was trained on.
    """
    import mlflow

    from mnistops.data import extras
    from mnistops.errors import RunNotFoundError
    from mnistops.evaluate.analysis import RunPredictions

    run = store.get_run(uri, run_id)
    cfg = run_config(uri, run_id)
    ds = extras.load(cfg.data)
    expected = run.data.tags.get(record.DATA_FINGERPRINT)
    if ds.fingerprint != expected:
        raise DataError(
            f"dataset {cfg.data.dataset} now has fingerprint {ds.fingerprint[:12]}, but run {run_id} was trained on "
            f"{str(expected)[:12]}: evaluate it on its own data"
        )
    with processes.temporary_directory("eval") as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path="predictions/predictions.npz", dst_path=tmp, tracking_uri=uri
            )
        except Exception:
            raise RunNotFoundError(
                f"run {run_id} holds no predictions/predictions.npz: evaluate a training run"
            ) from None
        with np.load(Path(path)) as z:
            rows, proba = z["rows"].astype(np.int64), z["proba"].astype(np.float32)
    return RunPredictions(run_id, cfg, rows, ds.images[rows], ds.labels[rows], proba, ds.class_names)
