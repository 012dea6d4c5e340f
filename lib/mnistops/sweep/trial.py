"""One trial, as a Dask worker runs it: an ordinary ``mnistops train`` run, nested under the sweep.

The worker keeps the data it prepared (loaded, validated, split, as features) in a module-level
cache, so the data is loaded once per worker process, not once per trial. A trial that fails
(a parameter the fit refuses, an out-of-memory error the model raises) returns its error instead
of raising, so the driver records it and the sweep goes on.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

from mnistops import processes, record, threadsafe_ast

log = logging.getLogger(__name__)

# Prepared data kept by this worker process between trials (see mnistops.pipeline.data_key).
_DATA: dict[tuple[Any, ...], Any] = {}

SWEEP_TAG, TRIAL_TAG = record.SWEEP_RUN_ID, record.SWEEP_TRIAL


@dataclass
class TrialOutcome:
    """What a worker sends back for one trial."""

    number: int
    ok: bool
    run_id: str | None = None
    value: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    data_reused: bool = False
    worker: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def run_trial(
    number: int,
    config: dict[str, Any],
    params: dict[str, Any],
    metric: str,
    sweep_run_id: str,
    uri: str,
    placement: dict[str, list[str]],
    cores: int | None = None,
) -> TrialOutcome:
    """Train the config with ``params`` set as model parameters, as a child run of the sweep, on
    this worker's share of its host's cores (``cores``, or the host's divided among its workers:
    see :func:`mnistops.cluster.confined`)."""
    import time

    from mnistops.cluster import confined

    threadsafe_ast.install()  # a Dask worker parses on several threads
    t0 = time.perf_counter()
    os.environ["MLFLOW_TRACKING_URI"] = uri  # the driver's store, whatever this worker was started with
    outcome = TrialOutcome(number, ok=False, worker=f"{socket.gethostname()}:{os.getpid()}")
    try:
        with confined(placement, cores) as n_cores:
            _train(outcome, config, params, sweep_run_id, uri, n_cores)
        outcome.value = outcome.metrics.get(metric)
    except Exception as exc:  # any failure of this trial is its own; the sweep goes on
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        outcome.error = f"{type(exc).__name__}: {first}"
        log.warning("trial %d failed: %s", number, outcome.error)
    outcome.seconds = round(time.perf_counter() - t0, 3)
    return outcome


def _train(
    outcome: TrialOutcome, config: dict[str, Any], params: dict[str, Any], sweep_run_id: str, uri: str, n_cores: int
) -> None:
    from mnistops.catalog import PARAMS
    from mnistops.cluster import cpus
    from mnistops.config import build_config
    from mnistops.pipeline import data_key, train

    data = {**config, "model": {**config["model"], "params": {**config["model"].get("params", {}), **params}}}
    for knob in ("n_jobs", "threads"):  # the forests' and the CNN's share of the cores
        if knob in PARAMS[data["model"]["name"]].model_fields and knob not in params:
            data["model"]["params"][knob] = n_cores
    data["tracking"] = {**data.get("tracking", {}), "uri": uri, "run_name": f"trial-{outcome.number}"}
    cfg = build_config(data)
    outcome.data_reused = data_key(cfg) in _DATA
    tags = {
        record.PARENT_RUN_ID: sweep_run_id,
        SWEEP_TAG: sweep_run_id,
        TRIAL_TAG: str(outcome.number),
        record.SWEEP_WORKER: outcome.worker,
        record.SWEEP_CORES: str(n_cores),
        record.SWEEP_CPUS: ",".join(map(str, cpus())),
        record.SWEEP_DATA_REUSED: str(outcome.data_reused).lower(),
    }
    # MLflow's own temporary folders (a model staged for logging, say) go in a folder named after
    # this worker, so that a worker killed mid-trial leaves nothing the next command does not sweep.
    with processes.temporary_directory("trial") as tmp:
        old, tempfile.tempdir = tempfile.tempdir, tmp
        try:
            result = train(cfg, force=True, register=False, extra_tags=tags, data_cache=_DATA)
        finally:
            tempfile.tempdir = old
    outcome.ok, outcome.run_id = True, result.run_id
    outcome.metrics = {k: float(v) for k, v in result.metrics.items()}
