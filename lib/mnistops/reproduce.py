"""Verified reproduction: rebuild a run from its record alone and compare the results.

The saved ``config.yaml`` is read back with no environment or overrides; the data must have
the run's fingerprint (else we refuse, naming both); a different commit or a dirty tree and
any package whose version changed are reported. The run is trained again (never from the run
cache, never registered), logged as a new run tagged with the original's id, and every metric
and every test-set prediction is compared: identical for deterministic models, or within the
model's stated tolerance. The verdict is tagged on the new run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mnistops import processes, record
from mnistops.errors import ReproductionError
from mnistops.progress import Reporter
from mnistops.tracking import housekeeping, provenance, store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tolerance:
    """How close a re-run must come: absolute differences on metrics and probabilities."""

    metric_atol: float
    proba_atol: float
    reason: str


EXACT = Tolerance(0.0, 0.0, "deterministic: same seed, same data, same code give the same bits")
# The CNN's kernels are deterministic (torch.use_deterministic_algorithms) for a fixed thread
# count; a different thread count changes float summation order, hence the small tolerance.
TOLERANCES = {"cnn": Tolerance(2e-3, 1e-4, "CPU float summation order can change with the thread count")}


@dataclass
class Reproduction:
    """The outcome of ``mnistops reproduce``."""

    original_run: str
    new_run: str
    verdict: str  # identical | within_tolerance | mismatch
    tolerance: dict[str, Any]
    metric_diffs: dict[str, float]
    prediction_mismatches: int
    max_proba_diff: float
    warnings: list[str] = field(default_factory=list)
    package_diffs: dict[str, dict[str, str | None]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready outcome."""
        return dict(self.__dict__)


def _predictions(uri: str, run_id: str) -> dict[str, np.ndarray]:
    import mlflow

    mlflow.set_tracking_uri(uri)
    with processes.temporary_directory("predictions") as tmp:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="predictions/predictions.npz", dst_path=tmp
        )
        with np.load(path) as z:
            return {k: z[k] for k in z.files}


def package_diffs(tags: dict[str, str]) -> dict[str, dict[str, str | None]]:
    """Key packages whose version now differs from the run's ``env.pkg.*`` tags."""
    now = provenance.package_versions()
    recorded = {k.removeprefix("env.pkg."): v for k, v in tags.items() if k.startswith("env.pkg.")}
    return {
        name: {"run": recorded.get(name), "now": now.get(name)}
        for name in sorted(set(recorded) | set(now))
        if recorded.get(name) != now.get(name)
    }


def reproduce(uri: str, run_id: str, progress: Reporter | None = None) -> Reproduction:
    """Re-run ``run_id`` from its record and compare; see the module docstring."""
    from mnistops.data import extras
    from mnistops.pipeline import train
    from mnistops.tracking.runs import is_timing, run_config

    store.check_store(uri, create=False)
    housekeeping.tidy(uri)
    original = store.get_run(uri, run_id)
    tags = original.data.tags
    cfg = run_config(uri, run_id)
    cfg.tracking.uri = uri
    want = tags.get(record.DATA_FINGERPRINT)
    ds = extras.load(cfg.data, progress)
    if ds.fingerprint != want:
        raise ReproductionError(
            f"the data changed: run {run_id} trained on {cfg.data.dataset} with fingerprint {want}, "
            f"it now has fingerprint {ds.fingerprint}; restore the original data to reproduce this run"
        )
    warnings = []
    code = provenance.code_versions().get("code")
    recorded_commit = tags.get(record.GIT_CODE_COMMIT)
    if code is not None and recorded_commit and code.commit != recorded_commit:
        warnings.append(f"code differs: run {run_id} used commit {recorded_commit}, HEAD is now {code.commit}")
    if code is not None and code.dirty:
        warnings.append(f"the mnistops source tree at {code.root} has uncommitted changes")
    if tags.get("git.code.dirty") == "true":
        warnings.append(f"run {run_id} itself was made from a dirty tree (see its code/code.diff)")
    diffs = package_diffs(tags)
    for name, d in diffs.items():
        warnings.append(f"package {name}: {d['run']} in the run, {d['now']} now")
    for w in warnings:
        log.warning(w)

    result = train(cfg, progress, force=True, register=False, extra_tags={record.REPRODUCTION_OF: run_id})
    tol = TOLERANCES.get(cfg.model.name, EXACT)
    new_metrics = store.get_run(uri, result.run_id).data.metrics  # step metrics too (latest values)
    metric_diffs = {
        k: abs(new_metrics.get(k, float("nan")) - v) for k, v in original.data.metrics.items() if not is_timing(k)
    }
    old_pred, new_pred = _predictions(uri, run_id), _predictions(uri, result.run_id)
    if not np.array_equal(old_pred["rows"], new_pred["rows"]):
        raise ReproductionError(f"run {run_id} and its reproduction scored different test rows: the split changed")
    mismatches = int(np.count_nonzero(old_pred["label"] != new_pred["label"]))
    max_proba = float(np.max(np.abs(old_pred["proba"].astype(np.float64) - new_pred["proba"])))
    worst = max(metric_diffs.values(), default=0.0)
    if worst == 0.0 and max_proba == 0.0 and mismatches == 0:
        verdict = "identical"
    elif worst <= tol.metric_atol and max_proba <= tol.proba_atol and not np.isnan(worst):
        verdict = "within_tolerance"
    else:
        verdict = "mismatch"
    c = store.client(uri)
    c.set_tag(result.run_id, record.REPRODUCTION_VERDICT, verdict)
    c.set_tag(result.run_id, record.REPRODUCTION_MAX_METRIC_DIFF, f"{worst:.3g}")
    c.set_tag(result.run_id, record.REPRODUCTION_MISMATCHES, str(mismatches))
    return Reproduction(
        original_run=run_id,
        new_run=result.run_id,
        verdict=verdict,
        tolerance=dict(tol.__dict__),
        metric_diffs={k: v for k, v in metric_diffs.items() if v != 0.0},
        prediction_mismatches=mismatches,
        max_proba_diff=max_proba,
        warnings=warnings,
        package_diffs=diffs,
    )
