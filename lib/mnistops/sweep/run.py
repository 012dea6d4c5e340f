"""``mnistops sweep``: Optuna chooses the trials, Dask runs them, MLflow records them.

How a sweep goes:

1. The space and the base config are checked, the store is checked and the cluster is reached
   (a LocalCluster of K workers on 127.0.0.1, or ``--scheduler``) before any run is opened.
2. One parent run (``mnistops.run_type = sweep``) records the space, the sampler and its seed
   (params), the base config and the space (artifacts), and, per trial, the best value so far
   (metric ``best_<metric>``, step = trial number).
3. The study lives in this process: Optuna's ask-and-tell interface. Each of the K workers runs
   one trial at a time (a Dask task) and K more are asked for ahead; they are told in trial order,
   and trial ``n + 2K`` is asked for once trials ``0..n`` are told. So the
   sampler sees the same history whatever the timing, and a seed gives the same sweep on any
   timing. The workers never touch the study: they get a parameter set and send back an outcome.
4. Each trial is an ordinary training run nested under the parent (``mlflow.parentRunId``, tag
   ``mnistops.sweep.trial``). A trial that fails is told to Optuna as failed and its run ends
   FAILED with the error; the sweep goes on. A trial whose worker died is failed the same way
   (the cluster does not run it twice), its run, left RUNNING by the dead process, is ended
   FAILED, and the nanny starts a new worker for the trials to come. One trial number, one
   Optuna trial, one run: none counted twice, none lost.
5. The best trial's model is registered as a new version; ``--promote`` sends it through the
   promotion gate, as ``mnistops promote`` would.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mnistops import record
from mnistops.config import Config, dump_yaml
from mnistops.errors import MnistopsError
from mnistops.sweep.space import Space
from mnistops.sweep.trial import SWEEP_TAG, TRIAL_TAG, TrialOutcome, run_trial
from mnistops.tracking import housekeeping, provenance, store

log = logging.getLogger(__name__)


# What a trial imports: a local cluster's workers start with them loaded (see cluster.connect).
TRIAL_MODULES = (
    "numpy",
    "pandas",
    "mlflow",
    "mlflow.pyfunc",
    "sklearn.ensemble",
    "sklearn.metrics",
    "sklearn.model_selection",
    "sklearn.decomposition",
    "scipy.stats",
    "threadpoolctl",
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
    "mnistops.pipeline",
    "mnistops.sweep.trial",
    "mnistops.evaluate.plots",
    "mnistops.evaluate.metrics",
    "mnistops.evaluate.reference",
    "mnistops.train.models",
    "mnistops.data.split",
    "mnistops.data.validate",
    # what opening an SQL store imports (a second, cold, in every worker otherwise)
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "alembic.command",
    "alembic.runtime.migration",
    "sqlalchemy.dialects.sqlite",
    "mnistops.tracking.housekeeping",
)


class SweepError(MnistopsError, RuntimeError):
    """No trial of the sweep completed."""

    exit_code = 1


@dataclass
class SweepResult:
    """What ``mnistops sweep --json`` prints."""

    run_id: str
    tracking_uri: str
    experiment: str
    model: str
    metric: str
    direction: str
    sampler: str
    seed: int
    workers: int
    scheduler: str
    trials: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    model_version: str | None = None
    promotion: dict[str, Any] | None = None
    seconds: float = 0.0
    trial_cores: int | None = None  # None: each host's cores shared among its workers

    @property
    def completed(self) -> int:
        return sum(t["state"] == "COMPLETE" for t in self.trials)

    @property
    def failed(self) -> int:
        return sum(t["state"] == "FAIL" for t in self.trials)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready result."""
        return {**asdict(self), "completed": self.completed, "failed": self.failed}


def trial_config(cfg: Config, space: Space) -> dict[str, Any]:
    """The base of every trial: the config, with the space's model (its parameters kept only when
    the config names the same model)."""
    data = cfg.to_dict()
    if data["model"]["name"] != space.model:
        data["model"] = {**data["model"], "name": space.model, "params": {}}
    return data


def _sampler(name: str, seed: int) -> Any:
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise MnistopsError(f"--sampler {name!r}: choose tpe or random")


def sweep(
    cfg: Config,
    space: Space,
    n_trials: int,
    workers: int = 2,
    scheduler: str | None = None,
    sampler: str = "tpe",
    promote: bool = False,
    on_trial: Callable[[dict[str, Any]], None] | None = None,
    trial_cores: int | None = None,
) -> SweepResult:
    """Run ``n_trials`` trials of ``space`` on Dask and record them under one parent run.

    Raises:
        ConfigError: a trial config the model refuses (checked on the space's bounds first).
        ClusterError: an unreachable or malformed scheduler.
        TrackingError: an unusable store.
        SweepError: every trial failed (the parent run ends FAILED).
    """
    import optuna

    from mnistops import cluster

    base = _checked(cfg, space, n_trials, scheduler, trial_cores)
    if scheduler is None:  # the local workers' imports overlap this process's own start
        cluster.start_fork_server(TRIAL_MODULES)
    uri = store.absolute_uri(store.resolve_uri(cfg.tracking.uri))
    store.check_store(uri, timeout=cfg.tracking.timeout)
    housekeeping.tidy(uri)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_sampler = _sampler(sampler, cfg.seed)
    t0 = time.perf_counter()
    opened: list[str] = []
    try:
        with cluster.connect(workers, scheduler, preload=TRIAL_MODULES) as dask:
            tags = _parent_tags(cfg, space)
            with store.tracked_run(uri, cfg.tracking.experiment, tags[record.RUN_NAME], tags) as run:
                parent = run.info.run_id
                opened.append(parent)
                where = dask.address if not dask.local else "local"
                result = SweepResult(
                    parent,
                    uri,
                    cfg.tracking.experiment,
                    space.model,
                    space.metric,
                    str(space.direction),
                    type(study_sampler).__name__,
                    cfg.seed,
                    dask.workers,
                    where,
                    trial_cores=trial_cores,
                )
                _log_parent_inputs(cfg, space, result, n_trials)
                study = optuna.create_study(
                    direction=space.direction, sampler=study_sampler, study_name=f"mnistops-sweep-{parent}"
                )
                try:
                    _run_trials(dask, study, space, base, n_trials, uri, parent, result, on_trial)
                finally:
                    _log_trials_table(result)
                if result.completed == 0:
                    first = next((t["error"] for t in result.trials if t.get("error")), "no trial ran")
                    raise SweepError(f"every one of the {n_trials} trials failed; the first: {first}")
                result.best = ranked(result, 1)[0]
                _finish(cfg, uri, parent, result, promote)
    except BaseException:
        # Interrupted (or the cluster failed): the workers are gone, so are the trials they ran.
        if opened:
            with contextlib.suppress(Exception):
                housekeeping.end_children(uri, opened[0], "KILLED", f"sweep {opened[0]} was stopped")
        raise
    finally:
        from mnistops import processes

        processes.sweep()  # the temporary folders of workers that were killed (or stopped mid-trial)
    result.seconds = round(time.perf_counter() - t0, 3)
    return result


def _checked(
    cfg: Config, space: Space, n_trials: int, scheduler: str | None, trial_cores: int | None
) -> dict[str, Any]:
    """The trials' base config, once every argument and both ends of every range are checked."""
    from mnistops import cluster
    from mnistops.config import build_config

    if n_trials < 1:
        raise MnistopsError(f"--trials {n_trials}: give at least 1 trial")
    if trial_cores is not None:
        have = len(cluster.cpus())
        if trial_cores < 1 or (scheduler is None and trial_cores > have):
            raise MnistopsError(
                f"--trial-cores {trial_cores}: give 1 to {have} (this machine's cores), "
                "or leave it out to share the cores among the workers"
            )
    base = trial_config(cfg, space)
    for corner in (0, -1):  # the whole config, at both ends of every range, before anything starts
        values = {name: p.bounds()[corner] for name, p in space.params.items()}
        build_config({**base, "model": {**base["model"], "params": {**base["model"]["params"], **values}}})
    return base


def _run_trials(
    dask: Any,
    study: Any,
    space: Space,
    base: dict[str, Any],
    n_trials: int,
    uri: str,
    parent: str,
    result: SweepResult,
    on_trial: Callable[[dict[str, Any]], None] | None,
) -> None:
    """One trial per worker at a time, K more asked for ahead; told to Optuna in trial order.

    Trial ``n + 2K`` (K workers) is asked for once trials ``0..n`` are told, whatever order they
    finished in: the sampler sees the same history for every trial on any timing, so a seed gives
    the same sweep. The K trials asked ahead wait here, not on a worker, so a worker that finishes
    early starts the next one at once, and a worker that dies takes only its own trial with it.
    """
    import mlflow

    distributions = space.distributions()
    share = (dask.placement(), result.trial_cores)  # each worker's cores (see cluster.confined)
    best: float | None = None
    pending: deque[Any] = deque()  # asked for, not yet sent to a worker
    running: dict[int, tuple[Any, Any]] = {}  # trial number -> (trial, future)
    finished: dict[int, tuple[Any, TrialOutcome]] = {}  # done, waiting for the trials before them to be told
    asked = 0

    def ask() -> None:
        nonlocal asked
        pending.append(study.ask(distributions))
        asked += 1

    try:
        for _ in range(min(2 * dask.workers, n_trials)):
            ask()
        while pending or running:
            while pending and len(running) < dask.workers:  # a trial for every free worker
                trial = pending.popleft()
                args = (trial.number, base, dict(trial.params), space.metric, parent, uri, *share)
                key = f"mnistops-trial-{parent}-{trial.number}"
                running[trial.number] = (trial, dask.client.submit(run_trial, *args, key=key, pure=False))
            while not any(f.done() for _, f in running.values()):
                time.sleep(0.05)
            for number in [n for n, (_, f) in running.items() if f.done()]:
                trial, fut = running.pop(number)
                finished[number] = (trial, _outcome(fut, number))
            while len(result.trials) in finished:  # told in trial order
                trial, outcome = finished.pop(len(result.trials))
                row = _tell(study, trial, outcome, space, uri, parent)
                if asked < n_trials:
                    ask()
                result.trials.append(row)
                if row["state"] == "COMPLETE":
                    value = float(row["value"])
                    better = best is None or (value > best if space.direction == "maximize" else value < best)
                    best = value if better else best
                    mlflow.log_metric(f"trial_{space.metric}", value, step=trial.number)
                if best is not None:
                    mlflow.log_metric(f"best_{space.metric}", best, step=trial.number)
                if on_trial is not None:
                    on_trial(row)
    finally:
        for _, fut in running.values():
            fut.cancel()


def _outcome(fut: Any, number: int) -> TrialOutcome:
    """The worker's outcome, or a failed one saying why the task itself failed."""
    from mnistops.cluster import task_failure

    try:
        out: TrialOutcome = fut.result()
        return out
    except Exception as exc:
        why = task_failure(exc)
        log.warning("trial %d failed: %s", number, why)
        return TrialOutcome(number, ok=False, error=why)


def _tell(study: Any, trial: Any, out: TrialOutcome, space: Space, uri: str, parent: str) -> dict[str, Any]:
    """Tell Optuna the outcome; make the MLflow record match it: one run per trial, none RUNNING."""
    from optuna.trial import TrialState

    c = store.client(uri)
    number = trial.number
    # A run of this trial that is still RUNNING belongs to an attempt whose worker is gone (or to
    # a retry the shared scheduler made): it ends FAILED, saying which run the trial is.
    why = f"trial {number} of sweep {parent}: its worker is gone"
    why += f"; the trial is run {out.run_id}" if out.ok else ""
    stale = housekeeping.end_children(uri, parent, "FAILED", why, f"tags.`{TRIAL_TAG}` = '{number}'")
    ok = out.ok and out.value is not None
    if not ok:
        if out.ok:
            out.error = f"the run has no metric {space.metric}"
        if out.run_id is None:  # the worker died: its run, if it got that far, is the trial's record
            # (ended above, or already by another process's orphan sweep: see mnistops.tracking.housekeeping)
            exp = c.get_run(parent).info.experiment_id
            found = stale or [
                r.info.run_id
                for r in c.search_runs(
                    [exp], f"tags.`{record.PARENT_RUN_ID}` = '{parent}' and tags.`{TRIAL_TAG}` = '{number}'"
                )
            ]
            out.run_id = found[0] if found else _failed_run(c, parent, number, trial.params)
        c.set_tag(out.run_id, record.SWEEP_ERROR, out.error or "")
    trial.set_user_attr("mlflow_run_id", out.run_id)
    if ok:
        study.tell(trial, out.value)
    else:
        study.tell(trial, state=TrialState.FAIL)
    trial_row = {
        "number": number,
        "state": "COMPLETE" if ok else "FAIL",
        "value": out.value,
        "params": dict(trial.params),
        "run_id": out.run_id,
        "seconds": out.seconds,
        "worker": out.worker,
        "data_reused": out.data_reused,
        "error": out.error,
    }
    return trial_row


def _failed_run(c: Any, parent: str, number: int, params: dict[str, Any]) -> str:
    """The record of a trial that failed before its run started (its worker died early, say)."""
    exp = c.get_run(parent).info.experiment_id
    run = c.create_run(
        exp,
        run_name=f"trial-{number}",
        tags={record.PARENT_RUN_ID: parent, SWEEP_TAG: parent, TRIAL_TAG: str(number), record.RUN_TYPE: "train"},
    )
    for name, value in params.items():
        c.log_param(run.info.run_id, f"model.params.{name}", value)
    c.set_terminated(run.info.run_id, "FAILED")
    return str(run.info.run_id)


def ranked(result: SweepResult, n: int = 5) -> list[dict[str, Any]]:
    """The ``n`` best completed trials, best first."""
    done = [t for t in result.trials if t["state"] == "COMPLETE"]
    sign = -1.0 if result.direction == "maximize" else 1.0
    return sorted(done, key=lambda t: (sign * t["value"], t["number"]))[:n]


def _parent_tags(cfg: Config, space: Space) -> dict[str, str]:
    return {
        record.RUN_TYPE: "sweep",
        record.MODEL: space.model,
        record.EXPERIMENT: cfg.tracking.experiment,
        record.RUN_NAME: cfg.tracking.run_name or f"sweep-{space.model}",
        **provenance.tags(),
    }


def _log_parent_inputs(cfg: Config, space: Space, result: SweepResult, n_trials: int) -> None:
    import mlflow
    import yaml

    mlflow.log_params(
        {
            "sweep.model": space.model,
            "sweep.metric": space.metric,
            "sweep.direction": str(space.direction),
            "sweep.space": json.dumps(space.describe(), sort_keys=True),
            "sweep.sampler": result.sampler,
            "sweep.seed": cfg.seed,
            "sweep.trials": n_trials,
            "sweep.workers": result.workers,
            "sweep.scheduler": result.scheduler,
            "sweep.trial_cores": "shared" if result.trial_cores is None else result.trial_cores,
        }
    )
    mlflow.log_text(dump_yaml(cfg), "config.yaml")
    mlflow.log_text(yaml.safe_dump(space.model_dump(mode="json"), sort_keys=False), "sweep/space.yaml")


def _log_trials_table(result: SweepResult) -> None:
    import mlflow

    mlflow.log_dict({"trials": result.trials}, "sweep/trials.json")


def _finish(cfg: Config, uri: str, parent: str, result: SweepResult, promote: bool) -> None:
    """Register the best trial's model; gate it with ``promote``."""
    import mlflow

    from mnistops.lifecycle import registry
    from mnistops.tracking.runs import model_uri_of

    best = result.best or {}
    run = store.get_run(uri, best["run_id"])
    name = cfg.tracking.registered_model
    version = registry.register(uri, name, model_uri_of(run), best["run_id"], run.data.tags, run.data.metrics)
    c = store.client(uri)
    c.set_tag(best["run_id"], record.MODEL_VERSION, version)
    c.set_tag(best["run_id"], record.REGISTERED_MODEL, name)
    result.model_version = version
    mlflow.set_tags(
        {
            record.SWEEP_BEST_TRIAL: str(best["number"]),
            record.SWEEP_BEST_RUN_ID: best["run_id"],
            record.MODEL_VERSION: version,
        }
    )
    mlflow.log_metric(f"best_{result.metric}_final", float(best["value"]))
    if promote:
        decision = registry.promote(uri, best["run_id"], cfg.gate, name)
        result.promotion = decision.to_dict()
        mlflow.set_tag(record.SWEEP_PROMOTION, decision.verdict)


def space_file(root: Path, cfg: Config, given: Path | None) -> Path:
    """The space to search: ``--space``, else ``configs/space/<the config's model>.yaml``."""
    from mnistops.sweep.space import default_path

    return given if given is not None else default_path(root, cfg.model.name)
