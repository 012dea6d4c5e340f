"""Looking at runs: the run cache, ``runs list`` and ``runs compare``.

The run cache keys a training run on everything that decides its result: data fingerprint,
split fingerprint, config hash, the mnistops commit (clean trees only) and the environment hash
(Python and key package versions). A FINISHED run with the same key is returned instead of
training again.
"""

from __future__ import annotations

from typing import Any

from mnistops import processes
from mnistops.tracking import store


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
        if "mnistops.reproduction_of" not in run.data.tags:
            return run
    return None


def model_uri_of(run: Any) -> str:
    """The ``models:/`` URI of the model a run logged."""
    outputs = run.outputs.model_outputs if run.outputs else []
    return f"models:/{outputs[-1].model_id}" if outputs else ""


def list_runs(uri: str, experiment: str, model_name: str, limit: int = 20) -> list[dict[str, Any]]:
    """The newest ``limit`` runs of ``experiment`` as rows (JSON-ready)."""
    from datetime import UTC, datetime

    from mnistops.lifecycle.registry import CHAMPION, alias_version

    c = store.client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return []
    champion = alias_version(uri, model_name, CHAMPION)
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
                "model": kind if (kind := t.get("mnistops.run_type", "train")) != "train" else p.get("model.name", ""),
                "params": key_params,
                "accuracy": m.get("accuracy"),
                "f1_macro": m.get("f1_macro"),
                "data": t.get("mnistops.data_fingerprint", "")[:12],
                "champion": run.info.run_id == champion_run,
                "reproduction_of": t.get("mnistops.reproduction_of"),
                "ended_by": t.get("mnistops.ended_by"),
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
        "data": same("mnistops.data_fingerprint"),
        "split": same("mnistops.split_fingerprint"),
        "config": same("mnistops.config_hash"),
        "code": {**same("git.code.commit"), "dirty": [ta.get("git.code.dirty"), tb.get("git.code.dirty")]},
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

    from mnistops.errors import RunNotFoundError

    with processes.temporary_directory("artifact") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=path, dst_path=tmp, tracking_uri=uri
            )
        except Exception:
            raise RunNotFoundError(f"run {run_id} has no artifact {path}") from None
        with open(local, "rb") as f:
            return f.read()
