"""Run a batch of notebooks with papermill; one MLflow run holds the record of it.

What happens, in order:

1. The store is checked, then the batch run is opened in the config's experiment. It records
   the git state, the environment, each notebook's content hash (tags), every injected value
   (params), the resolved config (``config.yaml``) and the environment lock.
2. Each notebook runs in a fresh kernel of its own (the ``python3`` kernel of the running
   Python, so the project's venv), started ahead of its turn and told only where the store is
   (``MLFLOW_TRACKING_URI``, absolute). A notebook that declares ``batch_run_id`` gets the batch
   run's id (the training notebook nests its run under it and records the training run's id on
   it); one that takes ``training_run_id`` gets that training run.
3. Notebooks that do not depend on each other run side by side, at most ``jobs`` at once, each
   on a thread of this process driving its own kernel (:mod:`mnistops.runner.schedule` says
   which may and which starts first).
4. Each executed copy lands in ``<out>/<when>-<run id>/`` and is rendered as HTML on another
   thread while the batch goes on; both files are logged to the batch run.
5. A failing cell stops the batch: the notebooks running beside it are interrupted (``stopped``),
   none starts, the partly executed copies (with papermill's error banner) are saved and logged
   like the others, every run the batch opened that is still RUNNING is ended FAILED, and
   :class:`BatchFailed` says which notebook, which cell and what error. A cell timeout or a
   kernel that died is reported the same way.
6. SIGTERM or Ctrl-C interrupts the running cells (each kernel gets SIGINT, so a training run in
   it ends KILLED), then the kernels are shut down; one that does not stop within a grace period
   is killed. The batch run ends KILLED. No kernel outlives the batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from mnistops import gc_phases, processes, record, threadsafe_ast
from mnistops.config import Config, dump_yaml
from mnistops.errors import MnistopsError
from mnistops.runner import schedule
from mnistops.runner.kernels import KERNEL_NAME, Kernel, warm_modules
from mnistops.runner.notebooks import Notebook
from mnistops.tracking import housekeeping, provenance, store

log = logging.getLogger(__name__)


class BatchFailed(MnistopsError, RuntimeError):
    """A notebook of the batch failed; ``result`` holds what ran and where the copies are."""

    exit_code = 1

    def __init__(self, message: str, result: BatchResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class NotebookRun:
    """How one notebook of the batch went."""

    name: str
    # pending, running, completed, cached, failed, stopped (another notebook failed), killed, not run
    status: str = "pending"
    seconds: float | None = None
    reused_from: str | None = None  # cached: the batch run whose executed copy this is
    ipynb: str | None = None
    html: str | None = None
    error: str | None = None
    cell: int | None = None  # the failing cell's execution count, as "In [n]" shows it


@dataclass
class BatchResult:
    """What ``run_notebooks.py --json`` prints."""

    run_id: str
    status: str  # FINISHED, FAILED, KILLED
    out_dir: str
    tracking_uri: str
    experiment: str
    notebooks: list[NotebookRun] = field(default_factory=list)
    training_run_id: str | None = None
    training_cached: bool | None = None
    training_metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready result."""
        return asdict(self)


class BatchProgress(Protocol):
    """What the batch reports as it goes (the CLI draws it; library callers may ignore it)."""

    def notebook_started(self, name: str, n_cells: int) -> None:
        """A notebook started; it has ``n_cells`` cells (the injected one included)."""

    def cell_started(self, name: str, index: int, summary: str) -> None:
        """Cell ``index`` (0-based) of notebook ``name`` started; ``summary`` is its first line."""

    def notebook_finished(self, run: NotebookRun) -> None:
        """A notebook ended (completed, failed or killed)."""


class NullProgress:
    """Reports nothing."""

    def notebook_started(self, name: str, n_cells: int) -> None:
        """Ignore."""

    def cell_started(self, name: str, index: int, summary: str) -> None:
        """Ignore."""

    def notebook_finished(self, run: NotebookRun) -> None:
        """Ignore."""


class _Halted(Exception):
    """Raised in a running notebook's thread, before its next cell, once another notebook failed."""


class _Stop:
    """What stops the running notebooks: SIGTERM or SIGINT (the batch ends KILLED), or the failure
    of one of them (the others are ``stopped``, the batch ends FAILED).

    Either way every running kernel is interrupted (its cell raises KeyboardInterrupt) and killed
    if it has not stopped ``grace`` seconds later. A signal while no notebook runs, or a second
    signal, raises at once.
    """

    def __init__(self, grace: float) -> None:
        self.signum: int | None = None
        self.failed: str | None = None  # the notebook whose failure stops the others
        self.kernels: set[Kernel] = set()  # those running a notebook; changed on the main thread only
        self.grace = grace
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _handle(self, signum: int, frame: object) -> None:
        first = self.signum is None
        self.signum = signum
        if first and self.kernels:
            log.warning("signal %d: interrupting the running cells", signum)
            self._interrupt_all()
            return
        self.raise_now()

    def halt(self, failed: str) -> None:
        """Notebook ``failed`` failed: interrupt the others (main thread)."""
        if self.failed is None:
            self.failed = failed
            self._interrupt_all()

    def _interrupt_all(self) -> None:
        for kernel in tuple(self.kernels):
            kernel.interrupt()
            timer = threading.Timer(self.grace, kernel.kill)
            timer.daemon = True
            timer.start()

    def raise_now(self) -> None:
        """Raise what ends the batch run KILLED (and the process with 143 or 130)."""
        if self.signum == signal.SIGTERM:
            raise store.Terminated()
        raise KeyboardInterrupt

    def check(self, **_: Any) -> None:
        """An nbclient hook: stop before the next cell once a signal came or another notebook failed."""
        if self.signum is not None:
            self.raise_now()
        if self.failed is not None:
            raise _Halted(self.failed)


def batch_tags(notebooks: Sequence[Notebook], cfg: Config) -> dict[str, str]:
    """The batch run's tags: what ran (notebook hashes), with which code and environment."""
    dists = provenance.installed()
    env = provenance.environment(dists)
    return {
        record.RUN_TYPE: "notebook_batch",
        record.CONFIG_HASH: cfg.hash(),
        record.NOTEBOOKS: ",".join(nb.name for nb in notebooks),
        record.RUN_NAME: cfg.tracking.run_name or "notebooks",
        **{record.notebook_sha256(nb.name): nb.sha256 for nb in notebooks},
        **provenance.tags(env),
    }


def _param_text(value: Any) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value, default=str)


def _describe_failure(nb: Notebook, exc: BaseException) -> tuple[str, int | None]:
    """One line naming the notebook, the cell and the error."""
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        cell = exc.exec_count
        evalue = str(exc.evalue).strip().splitlines()[0] if str(exc.evalue).strip() else ""
        what = f"{exc.ename}: {evalue}" if evalue else exc.ename
        return f"notebook {nb.name} failed at cell In [{cell}]: {what}", cell
    if isinstance(exc, CellTimeoutError):
        return f"notebook {nb.name}: a cell ran past the time limit ({str(exc).splitlines()[0]})", None
    if isinstance(exc, DeadKernelError):
        return f"notebook {nb.name}: the kernel died ({str(exc).splitlines()[0]})", None
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, RuntimeError) and "kernel" in first.lower():
        return f"notebook {nb.name}: its kernel did not start ({first}); see the kernel output above", None
    return f"notebook {nb.name}: {type(exc).__name__}: {first}", None


def run_batch(
    notebooks: Sequence[Notebook],
    parameters: dict[str, dict[str, Any]],
    cfg: Config,
    out_base: Path,
    progress: BatchProgress | None = None,
    cell_timeout: float | None = None,
    start_timeout: float = 120.0,
    grace: float = 20.0,
    cwd: Path | None = None,
    extra_tags: dict[str, str] | None = None,
    reuse: bool = False,
    force: Sequence[str] = (),
    jobs: int = 1,
) -> BatchResult:
    """Run ``notebooks``, each with its ``parameters``, recorded as one MLflow run.

    Args:
        notebooks: the batch, in run order.
        parameters: values to inject, by notebook name (see :mod:`mnistops.runner.params`).
        cfg: the resolved config (where the store is, the experiment; logged as ``config.yaml``).
        out_base: the folder under which ``<when>-<run id>/`` is made for the executed copies.
        progress: receives progress events (from several threads when ``jobs`` > 1).
        cell_timeout: seconds a cell may run (None: no limit).
        start_timeout: seconds a kernel may take to start.
        grace: seconds a kernel has to stop after an interrupt before it is killed.
        cwd: the kernels' working directory (default: this process's).
        extra_tags: more tags of the batch run (a grid nests it under the grid's run with
            ``mlflow.parentRunId``).
        reuse: reuse the executed copy of a notebook whose inputs equal an earlier execution's
            in the same store (:mod:`mnistops.runner.reuse`), except those named in ``force``.
        jobs: notebooks that may run at once (:mod:`mnistops.runner.schedule`); 1: in run order.

    Raises:
        BatchFailed: a notebook failed (its message is one line); the batch run ended FAILED.
        KeyboardInterrupt, Terminated: a signal stopped the batch; the batch run ended KILLED.
        ConfigError: a notebook's ``after`` names one that comes after it (nothing ran).
    """
    from mnistops.runner import reuse as reuse_module

    threadsafe_ast.install()  # this process parses on several threads from here on
    batch = _Batch(notebooks, parameters, cfg, progress or NullProgress(), cell_timeout, start_timeout, max(1, jobs))
    batch.reuse, batch.force = reuse, set(force)
    batch.resumes = (extra_tags or {}).get(record.BATCH_RESUMES)
    make_out_base(out_base)
    with contextlib.ExitStack() as stack:
        batch.work = Path(stack.enter_context(processes.temporary_directory("batch")))
        batch.io = stack.enter_context(ThreadPoolExecutor(2, thread_name_prefix="mnistops-batch-io"))
        batch.warm = stack.enter_context(ThreadPoolExecutor(2, thread_name_prefix="mnistops-batch-warm"))
        stack.callback(_shutdown_all, batch.kernels)
        # The first notebook's kernel boots and imports its libraries while this process imports
        # MLflow and opens the store: on two cores, both are done in the time of the longer one.
        # The others start once the store is open (every notebook waits for it; more kernels
        # starting would slow it down). Where notebooks may be reused, the store says first which
        # ones run (a new store holds none).
        if not reuse or reuse_module.store_is_new(batch.uri):
            batch.start_kernels(set(), cwd or Path.cwd(), upto=1)
        store.check_store(batch.uri, timeout=cfg.tracking.timeout)
        housekeeping.tidy(batch.uri)
        if reuse:
            batch.plan_reuse(cfg.tracking.experiment)
        tags = {**batch_tags(notebooks, cfg), record.BATCH_JOBS: str(batch.jobs), **(extra_tags or {})}
        if force:
            tags[record.BATCH_FORCED] = ",".join(force)
        run = stack.enter_context(store.tracked_run(batch.uri, cfg.tracking.experiment, tags[record.RUN_NAME], tags))
        log.info("batch run %s opened in %s", run.info.run_id, batch.uri)
        gc_phases.resume()  # start-up is over (see gc_phases)
        stop = stack.enter_context(_Stop(grace))
        return batch.run(run.info.run_id, out_base, stop, cwd or Path.cwd())
    raise AssertionError("unreachable")  # pragma: no cover  (the ExitStack never swallows)


def make_out_base(out_base: Path) -> None:
    """The folder for executed copies (asked for, so made), or a one-line error before anything runs."""
    try:
        out_base.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out_base, prefix=".probe-")  # noqa: SIM115
        probe.close()
    except OSError as exc:
        raise MnistopsError(f"cannot write executed notebooks to {out_base}: {exc.strerror}: pass --out DIR") from None


class _Batch:
    """The state of one batch while it runs (see :func:`run_batch`)."""

    def __init__(
        self,
        notebooks: Sequence[Notebook],
        parameters: dict[str, dict[str, Any]],
        cfg: Config,
        progress: BatchProgress,
        cell_timeout: float | None,
        start_timeout: float,
        jobs: int,
    ) -> None:
        self.notebooks, self.parameters, self.cfg = notebooks, parameters, cfg
        self.progress, self.cell_timeout, self.start_timeout = progress, cell_timeout, start_timeout
        self.jobs, self.schedule = jobs, schedule.Schedule(notebooks, side_by_side=jobs > 1)
        self.uri = store.absolute_uri(store.resolve_uri(cfg.tracking.uri))
        self.env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": self.uri,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        }
        self.kernels: dict[int, Kernel] = {}  # started, not yet shut down
        self.reuse, self.force = False, set[str]()
        self.resumes: str | None = None  # the batch run this one resumes
        self.experiment_id = ""
        self.lock_sha256 = ""
        self.decided: dict[int, tuple[str, str | None]] = {}  # notebook index: (key, batch to reuse)
        self.logged: list[Future[None]] = []
        self.work = Path()
        self.io: ThreadPoolExecutor
        self.warm: ThreadPoolExecutor

    def start_kernels(self, started: set[int], cwd: Path, upto: int | None = None) -> None:
        """Keep kernels started for the notebooks next in line (not those known to be reused):
        one more than may run at once (or ``upto``), warming up two at a time in the order they
        will start."""
        for i in self.schedule.upcoming(started):
            if len(self.kernels) >= (upto or self.jobs + 1):
                return
            if self._reused(i) is None:
                self.kernel_for(i, cwd)

    def kernel_for(self, i: int, cwd: Path) -> Kernel:
        """Notebook ``i``'s kernel, started now if it was not started ahead."""
        if i not in self.kernels:
            kernel = Kernel(self.work, i, cwd, self.env)
            kernel.warm_up(self.warm, self.start_timeout, warm_modules(self.notebooks[i]))
            self.kernels[i] = kernel
        return self.kernels[i]

    def plan_reuse(self, experiment: str) -> None:
        """Decide, before any kernel starts, which notebooks are reused: each whose inputs are known
        (what it is handed on comes from notebooks reused before it)."""
        store.ensure_experiment(self.uri, experiment)
        self.experiment_id = store.client(self.uri).get_experiment_by_name(experiment).experiment_id
        self.lock_sha256 = hashlib.sha256(provenance.environment_lock().encode()).hexdigest()
        values: dict[str, str] = {}
        for i, nb in enumerate(self.notebooks):
            if any(v not in values and p not in self.parameters.get(nb.name, {}) for p, v in nb.takes.items()):
                continue  # it takes a value from a notebook that runs: decided in its turn
            _, source = self.decide(i, values)
            if source is not None:
                values.update(_made(self.uri, source, nb))

    def decide(self, i: int, values: dict[str, str]) -> tuple[str, str | None]:
        """Notebook ``i``'s key, and the batch run whose executed copy it reuses (None: it runs)."""
        from mnistops.runner import reuse

        if i not in self.decided:
            nb = self.notebooks[i]
            params = self._params_with(nb, "", values)
            key = reuse.notebook_key(nb, params, self.lock_sha256)
            # A value it takes that nothing gave (--only 04 -p run_id ""): not an input a key can hold.
            unknown_input = any(not params.get(p) for p in nb.takes)
            forced = nb.name in self.force or "all" in self.force
            if not self.reuse or not nb.reusable or unknown_input or (forced and not self.resumes):
                self.decided[i] = (key, None)
            else:  # a forced notebook of a resumed batch: only what that batch itself completed
                within = self.resumes if forced else None
                self.decided[i] = (key, reuse.find(self.uri, self.experiment_id, nb.name, key, within))
        return self.decided[i]

    def _reused(self, i: int) -> str | None:
        return self.decided[i][1] if i in self.decided else None

    def run(self, run_id: str, out_base: Path, stop: _Stop, cwd: Path) -> BatchResult:
        when = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        out_dir = out_base / f"{when}-{run_id}"
        result = BatchResult(
            run_id,
            "RUNNING",
            str(out_dir),
            self.uri,
            self.cfg.tracking.experiment,
            [NotebookRun(nb.name) for nb in self.notebooks],
        )
        try:
            if any(self._reused(i) is None for i in range(len(self.notebooks))):
                self.io.submit(_warm_html)  # nbconvert, for the first notebook that runs
            _log_batch_inputs(self.cfg, self.parameters)
            out_dir.mkdir()
            t_batch = time.perf_counter()
            with ThreadPoolExecutor(self.jobs, thread_name_prefix="mnistops-batch-notebook") as pool:
                failure = _Run(self, result, out_dir, stop, cwd).until_done(pool)
            if stop.signum is not None:
                stopped_at = ",".join(r.name for r in result.notebooks if r.status == "killed")
                self._end(result, "KILLED", {record.BATCH_STOPPED_AT: stopped_at})
                stop.raise_now()
            if failure is not None:
                name, message = failure
                result.error = message
                self._end(result, "FAILED", {record.BATCH_FAILED_NOTEBOOK: name, record.BATCH_ERROR: message[:5000]})
                raise BatchFailed(message, result)
            _finish_logging(self.logged)
            _log_metric(self.uri, run_id, "time_total_s", round(time.perf_counter() - t_batch, 3))
            result.status = "FINISHED"
            return result
        finally:
            for rec in result.notebooks:
                if rec.status == "pending":
                    rec.status = "not run"

    def _params_with(self, nb: Notebook, batch_run_id: str, values: dict[str, str]) -> dict[str, Any]:
        """What ``nb`` is given: its planned values, the batch run's id where it declares
        ``batch_run_id``, and the values it takes from earlier notebooks (a ``-p`` value wins)."""
        params = dict(self.parameters.get(nb.name, {}))
        if "batch_run_id" in nb.parameters:
            params["batch_run_id"] = batch_run_id
        for param, value in nb.takes.items():
            if value in values and param not in params:
                params[param] = values[value]
        return params

    def reuse_one(self, i: int, result: BatchResult, out_dir: Path, source: str) -> None:
        """Notebook ``i`` not run again: the executed copy of batch ``source`` logged to this batch,
        with what it handed on."""
        from mnistops.runner import reuse

        nb, nb_run, t0 = self.notebooks[i], result.notebooks[i], time.perf_counter()
        if i in self.kernels:  # started ahead before it was known to be reused
            self.kernels.pop(i).shutdown()
        copy = reuse.copy_executed(self.uri, source, nb.name, out_dir)
        c = store.client(self.uri)
        for path in (copy, copy.with_suffix(".html")):
            if path.exists():
                c.log_artifact(result.run_id, str(path), "notebooks")
        c.set_tag(result.run_id, record.notebook_key(nb.name), self.decided[i][0])
        c.set_tag(result.run_id, record.notebook_reused_from(nb.name), source)
        if nb.makes:  # what it handed on, recorded on this batch too
            handed = c.get_run(source).data.tags
            for tag in (record.TRAINING_RUN_ID, record.TRAINING_CACHED):
                if tag in handed:
                    c.set_tag(result.run_id, tag, handed[tag])
            _read_training(self.uri, result.run_id, result)
        html = copy.with_suffix(".html")
        nb_run.status, nb_run.reused_from, nb_run.ipynb = "cached", source, str(copy)
        nb_run.html = str(html) if html.exists() else None
        nb_run.seconds = round(time.perf_counter() - t0, 3)
        self.progress.notebook_finished(nb_run)

    def execute_one(self, i: int, result: BatchResult, out_dir: Path, stop: _Stop) -> BaseException | None:
        """Run notebook ``i`` on its kernel (on a thread of its own); its failure, if any, is
        returned for the main thread to settle (:meth:`_Run.settle`), never raised."""
        nb, nb_run, kernel, run_id = self.notebooks[i], result.notebooks[i], self.kernels[i], result.run_id
        out_nb = out_dir / nb.path.name
        # papermill writes the copy as the cells run; it goes into place only whole (_publish).
        part = out_dir / f".{nb.path.stem}.part.ipynb"
        nb_run.ipynb, t0 = str(out_nb), time.perf_counter()
        failure: BaseException | None = None
        try:
            kernel.ready(self.start_timeout)
            log.info("%s: kernel ready after %.2f s of waiting", nb.name, time.perf_counter() - t0)
            t0 = time.perf_counter()
            params = self._params_with(nb, run_id, _values(result))
            _execute(nb, part, params, kernel, self.progress, stop, self.cell_timeout)
        except BaseException as exc:  # papermill's and nbclient's errors, ours, and signals
            failure = exc
        finally:
            nb_run.seconds = round(time.perf_counter() - t0, 3)
            _publish(part, out_nb)
        if out_nb.exists():
            key = self.decided[i][0] if failure is None and i in self.decided else None
            self.logged.append(self.io.submit(_render_and_log, self.uri, run_id, out_nb, nb_run, key))
        if "batch_run_id" in nb.parameters:
            _read_training(self.uri, run_id, result)
        return failure

    def _end(self, result: BatchResult, status: str, tags: dict[str, str]) -> None:
        """After a failure or a signal: the copies logged, no run left RUNNING."""
        _finish_logging(self.logged)
        result.status = status
        housekeeping.end_children(self.uri, result.run_id, status, f"notebook batch {result.run_id} ({status.lower()})")
        c = store.client(self.uri)
        for key, value in tags.items():
            c.set_tag(result.run_id, key, value)


class _Run:
    """The batch's notebooks from first to last: each started once those it waits for are done,
    at most ``jobs`` at once, until all are done or a failure or a signal stops them."""

    def __init__(self, batch: _Batch, result: BatchResult, out_dir: Path, stop: _Stop, cwd: Path) -> None:
        self.batch, self.result, self.out_dir, self.stop, self.cwd = batch, result, out_dir, stop, cwd
        self.done: set[int] = set()
        self.started: set[int] = set()
        self.running: dict[Future[BaseException | None], int] = {}
        self.failure: tuple[str, str] | None = None  # the first failed notebook, and its one line

    def until_done(self, pool: ThreadPoolExecutor) -> tuple[str, str] | None:
        """Run every notebook; return the first failure (name, one line), or None."""
        try:
            while True:
                if self.stop.signum is None and self.failure is None:
                    self.start_ready(pool)
                if not self.running:
                    return self.failure
                finished, _ = wait(self.running, timeout=0.2, return_when=FIRST_COMPLETED)
                for future in finished:
                    self.settle(self.running.pop(future), future.result())
        except BaseException:  # a second signal: no thread may wait for a kernel that will not stop
            for i in self.running.values():
                self.batch.kernels[i].kill()
            raise

    def start_ready(self, pool: ThreadPoolExecutor) -> None:
        """Reuse or start each notebook whose turn has come, while a place is free."""
        batch = self.batch
        progressed = True
        while progressed:
            progressed = False
            for i in batch.schedule.ready(self.done, self.started):
                if self.stop.signum is not None:  # a signal came meanwhile: the running ones settle
                    return
                if batch.reuse:
                    _, source = batch.decide(i, _values(self.result))
                    if source is not None:
                        self.started.add(i)
                        batch.reuse_one(i, self.result, self.out_dir, source)
                        self.done.add(i)
                        progressed = True
                        break  # what it made may free others
                if len(self.running) < batch.jobs:
                    self.started.add(i)
                    self.stop.kernels.add(batch.kernel_for(i, self.cwd))
                    self.result.notebooks[i].status = "running"
                    self.running[pool.submit(batch.execute_one, i, self.result, self.out_dir, self.stop)] = i
        batch.start_kernels(self.started, self.cwd)  # the next ones warm up meanwhile

    def settle(self, i: int, failure: BaseException | None) -> None:
        """Notebook ``i`` ended: its kernel shut down, its status told; a failure stops the others."""
        batch, stop = self.batch, self.stop
        nb, nb_run = batch.notebooks[i], self.result.notebooks[i]
        kernel = batch.kernels.pop(i)
        stop.kernels.discard(kernel)
        kernel.shutdown()  # before its runs are ended: nothing in it may write to them afterwards
        self.done.add(i)
        if failure is None:
            nb_run.status = "completed"
            _log_metric(batch.uri, self.result.run_id, f"time_{nb.name}_s", nb_run.seconds)
        elif stop.signum is not None:
            nb_run.status, nb_run.error = "killed", f"stopped by signal {stop.signum}"
        elif stop.failed is not None and _interrupted(failure):
            nb_run.status, nb_run.error = "stopped", f"stopped: {stop.failed} failed"
        elif not isinstance(failure, Exception):
            raise failure
        else:
            message, nb_run.cell = _describe_failure(nb, failure)
            if ("died" in message or "did not start" in message) and kernel.log_tail().strip():
                log.error("kernel output:\n%s", kernel.log_tail())
            nb_run.status, nb_run.error = "failed", message
            if self.failure is None:
                self.failure = (nb.name, message)
                stop.halt(nb.name)
        batch.progress.notebook_finished(nb_run)


def _interrupted(failure: BaseException) -> bool:
    """Whether a notebook ended because the batch interrupted it (not by a failure of its own)."""
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    if isinstance(failure, _Halted | KeyboardInterrupt | DeadKernelError):  # dead: killed after the grace
        return True
    return isinstance(failure, PapermillExecutionError) and failure.ename == "KeyboardInterrupt"


def _publish(part: Path, final: Path) -> None:
    """Put the executed copy ``part`` into place as ``final`` if it is whole; else remove it. A
    reader finds a whole notebook or none: a full disk cuts papermill's writes anywhere."""
    import json

    try:
        json.loads(part.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return
    except (OSError, ValueError) as exc:
        log.error("the executed copy of %s is not whole (%s): not kept", final.name, exc)
        part.unlink(missing_ok=True)
        return
    part.replace(final)


def _execute(
    nb: Notebook,
    out_nb: Path,
    params: dict[str, Any],
    kernel: Kernel,
    progress: BatchProgress,
    stop: _Stop,
    cell_timeout: float | None,
) -> None:
    """papermill, on our kernel and client, with hooks for progress and signals."""
    import papermill
    from papermill.engines import papermill_engines

    from mnistops.runner.engine import Engine

    papermill_engines.register("mnistops", Engine)  # papermill's documented way; idempotent

    def on_notebook_start(notebook: Any = None, **_: Any) -> None:
        progress.notebook_started(nb.name, len(notebook.cells) if notebook is not None else 0)

    def on_cell_start(cell: Any = None, cell_index: int = 0, **_: Any) -> None:
        stop.check()
        first = next((ln for ln in str(cell.source).splitlines() if ln.strip()), "") if cell is not None else ""
        progress.cell_started(nb.name, cell_index, first[:80])

    papermill.execute_notebook(
        str(nb.path),
        str(out_nb),
        parameters=params,
        engine_name="mnistops",
        kernel_name=KERNEL_NAME,
        progress_bar=False,
        km=kernel.km,
        execution_timeout=cell_timeout,
        coalesce_streams=True,
        on_notebook_start=on_notebook_start,
        on_cell_start=on_cell_start,
        on_cell_complete=stop.check,
    )


def _shutdown_all(kernels: dict[int, Kernel]) -> None:
    for kernel in kernels.values():
        kernel.shutdown()


def _warm_html() -> None:
    from mnistops.runner import html

    html.warm_up()


def _render_and_log(uri: str, run_id: str, out_nb: Path, nb_run: NotebookRun, key: str | None = None) -> None:
    """HTML of an executed copy, then both files into the batch run's ``notebooks/``; then, for a
    notebook that completed, its key (:mod:`mnistops.runner.reuse`): a later batch may reuse it."""
    from mnistops.runner import html

    c = store.client(uri)
    c.log_artifact(run_id, str(out_nb), "notebooks")
    t0 = time.perf_counter()
    try:
        page: Path | None = html.render(out_nb, out_nb.with_suffix(".html"))
        log.info("%s rendered in %.2f s", out_nb.name, time.perf_counter() - t0)
    except Exception as exc:  # a page we cannot render must not hide the notebook's own outcome
        log.error("could not render %s as HTML: %s", out_nb.name, exc)
        page = None
    if page is not None:
        nb_run.html = str(page)
        c.log_artifact(run_id, str(page), "notebooks")
    if key is not None:
        c.set_tag(run_id, record.notebook_key(out_nb.stem), key)


def _finish_logging(logged: list[Future[None]]) -> None:
    for f in logged:
        try:
            f.result()
        except Exception as exc:
            log.error("could not log an executed notebook: %s", exc)
    logged.clear()


# Where a batch run records each value a notebook makes (its metadata's mnistops.makes).
MADE_TAGS = {"training_run_id": record.TRAINING_RUN_ID}


def _values(result: BatchResult) -> dict[str, str]:
    """The values the batch's notebooks have made so far."""
    return {"training_run_id": result.training_run_id} if result.training_run_id else {}


def _made(uri: str, batch_id: str, nb: Notebook) -> dict[str, str]:
    """The values ``nb`` made in batch run ``batch_id``, read from its tags."""
    if not nb.makes:
        return {}
    tags = store.client(uri).get_run(batch_id).data.tags
    return {value: tags[MADE_TAGS[value]] for value in nb.makes if value in MADE_TAGS and MADE_TAGS[value] in tags}


def _read_training(uri: str, batch_id: str, result: BatchResult) -> None:
    """The training run the notebook recorded on the batch run, and its headline metrics."""
    tags = store.client(uri).get_run(batch_id).data.tags
    run_id = tags.get(record.TRAINING_RUN_ID)
    if not run_id:
        return
    result.training_run_id = run_id
    result.training_cached = tags.get(record.TRAINING_CACHED) == "true"
    metrics = store.client(uri).get_run(run_id).data.metrics
    result.training_metrics = {k: metrics[k] for k in record.HEADLINE if k in metrics}


def _log_metric(uri: str, run_id: str, key: str, value: float | None) -> None:
    if value is not None:
        store.client(uri).log_metric(run_id, key, value)


def _log_batch_inputs(cfg: Config, parameters: dict[str, dict[str, Any]]) -> None:
    """The injected values (one param per name), the resolved config and the environment lock."""
    import mlflow

    values: dict[str, str] = {}
    for params in parameters.values():
        for name, value in params.items():
            values[name] = _param_text(value)[:6000]
    if values:
        mlflow.log_params(values)
    mlflow.log_text(dump_yaml(cfg), "config.yaml")
    mlflow.log_dict(parameters, "parameters.json")
    mlflow.log_text(provenance.environment_lock(), "environment/requirements.lock.txt")
