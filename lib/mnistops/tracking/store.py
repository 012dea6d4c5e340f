"""MLflow tracking: the store behind a URI, runs that always end, and what a run logs.

The URI is ``MLFLOW_TRACKING_URI`` if set, else the config's ``tracking.uri``, else MLflow's
own default (``sqlite:///mlflow.db`` in the working directory). :func:`check_store` fails
fast, with one line, when the store cannot be reached, before any run is created.
:func:`tracked_run` guarantees that a run ends FINISHED, FAILED or KILLED (Ctrl-C, SIGTERM),
never RUNNING, and that its log file is uploaded whatever happened.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mnistops import processes, record
from mnistops.errors import RunNotFoundError, StoreNotFoundError, TrackingError, no_space

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow.db"


class Terminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM."""


def resolve_uri(config_uri: str | None) -> str:
    """``MLFLOW_TRACKING_URI``, else the config's URI, else ``sqlite:///mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or config_uri or DEFAULT_URI


def default_store_path() -> str:
    """The database file of the store :func:`resolve_uri` picks without a config (or its URI)."""
    uri = resolve_uri(None)
    return str(sqlite_path(uri) or uri)


def absolute_uri(uri: str) -> str:
    """``uri`` with a relative SQLite path made absolute (against the working directory), for
    another process with another working directory, a notebook kernel say, to find the same store."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        path = uri.removeprefix(prefix)
        if path and path != ":memory:":
            return prefix + str(Path(path).expanduser().resolve())
    return uri


def _quiet_mlflow() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Fail over HTTP in seconds, not after minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    # Bars for every artifact download: noise on a terminal and in a notebook alike.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Against a server MLflow writes "View run ... at: URL" to stdout whenever a run ends: stdout
    # is for the command's result (--json).
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    import mlflow  # noqa: F401  (it sets up its own loggers on import; quiet them after)

    for name in ("mlflow", "alembic", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # MLflow logs each failed statement with its whole SQL and traceback before it raises; mnistops
    # says what failed in one line (and the run's log keeps the exception).
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


DEFAULT_TIMEOUT_S = 5.0
# The packages that provide each database's driver, by the module SQLAlchemy imports.
DRIVER_PACKAGES = {
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "MySQLdb": "mysqlclient",
    "pymysql": "pymysql",
    "pyodbc": "pyodbc",
}
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


def store_timeout(timeout: float | None = None) -> float:
    """Seconds a store may take to answer: ``timeout``, else ``MNISTOPS_STORE_TIMEOUT``, else 5."""
    if timeout is not None:
        return timeout
    try:
        return float(os.environ.get("MNISTOPS_STORE_TIMEOUT", DEFAULT_TIMEOUT_S))
    except ValueError:
        raise TrackingError(
            f"MNISTOPS_STORE_TIMEOUT={os.environ['MNISTOPS_STORE_TIMEOUT']!r} is not a number of seconds"
        ) from None


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (absolute), or None (another store, or in memory)."""
    if not uri.startswith("sqlite:"):
        return None
    if uri.startswith("sqlite:///") and not set("?%") & set(uri):  # a plain path: SQLAlchemy not needed
        database: str | None = uri.removeprefix("sqlite:///")
    else:
        from sqlalchemy.engine import make_url

        database = make_url(uri).database
    if not database or database == ":memory:":
        return None
    return Path(database).expanduser().resolve()


def check_store(uri: str, create: bool = True, write: bool = True, timeout: float | None = None) -> None:
    """Make sure the tracking store at ``uri`` answers, in seconds, or raise a one-line error.
    It only checks (and creates a new SQLite store): ending what dead processes left behind is
    :func:`mnistops.tracking.housekeeping.tidy`, which the commands call next.

    Every way a store fails is checked before MLflow's own retry loop (ten attempts over about
    100 s) could start: a SQLite folder that does not exist or cannot be written, a database
    driver that is not installed (naming the ``pip install`` that fixes it), a server that does
    not answer within ``timeout`` seconds, a refused login. A new SQLite store is created under a
    file lock beside it, so that commands started at once on a new folder all succeed.

    Args:
        uri: the tracking URI.
        create: whether a missing SQLite store may be created. Commands that work on what is there
            (``runs``, ``promote``, ``rollback``, ``reproduce``) pass False: they say where they looked.
        write: whether the command writes to the store (``runs list`` and ``runs compare`` do not).
        timeout: seconds to wait for a server (default :func:`store_timeout`).

    Raises:
        StoreNotFoundError: no SQLite store there and ``create`` is False.
        TrackingError: anything else that keeps the store from being used.
    """
    timeout = store_timeout(timeout)
    scheme = urlparse(uri).scheme
    lock = None
    if scheme in ("http", "https"):
        _check_server(uri, timeout)
    elif scheme.startswith("sqlite"):
        lock = _check_sqlite(uri, create, write)
    elif scheme.split("+")[0] in ("postgresql", "mysql", "mssql"):
        _check_database(uri, timeout)
    with lock or contextlib.nullcontext():
        _open(uri)
    if lock is not None:
        # The store is made: its tables exist and nobody needs the lock any more. Whoever waits
        # on it still holds the old file; whoever comes next makes a new one and finds the
        # tables there. So no lock file is left beside the store (in a user's git tree, say).
        with contextlib.suppress(OSError):
            Path(lock.lock_file).unlink()


def owner_tags() -> dict[str, str]:
    """Tags naming this process, which every run it starts carries: host, pid and start time (so
    that :func:`mnistops.tracking.housekeeping.reap` can tell when it is gone)."""
    pid, start = processes.identity()
    return {record.OWNER_HOST: socket.gethostname(), record.OWNER_PID: str(pid), record.OWNER_STARTED: f"{start:.2f}"}


def _check_server(uri: str, timeout: float) -> None:
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout).raise_for_status()
    except requests.RequestException as exc:
        raise TrackingError(
            f"cannot reach the MLflow server at {uri} ({type(exc).__name__}): "
            "start it, or set MLFLOW_TRACKING_URI to a reachable store"
        ) from None


def _check_sqlite(uri: str, create: bool, write: bool) -> Any | None:
    """Checks of a SQLite store's file and folder; returns the lock to open a new one under."""
    path = sqlite_path(uri)
    if path is None:
        return None
    folder = path.parent
    if not folder.is_dir():
        raise TrackingError(
            f"tracking store {uri}: folder {folder} does not exist; create it, or set MLFLOW_TRACKING_URI"
        )
    if not path.exists():
        if not create:
            raise StoreNotFoundError(
                f"no tracking store at {path} (looked in {folder}): run `mnistops train` there first, "
                "or point MLFLOW_TRACKING_URI or the config's tracking.uri at your store"
            )
        if not os.access(folder, os.W_OK | os.X_OK):
            raise TrackingError(
                f"tracking store {uri}: cannot create {path.name} in {folder}, a read-only folder; "
                "run from a folder you can write to, or set MLFLOW_TRACKING_URI"
            )
    elif not os.access(path, os.R_OK):
        raise TrackingError(f"tracking store {uri}: cannot read {path}: check its permissions")
    elif write and not (os.access(path, os.W_OK) and os.access(folder, os.W_OK | os.X_OK)):
        what = path if not os.access(path, os.W_OK) else folder
        raise TrackingError(
            f"tracking store {uri}: {what} is read-only, and this command writes to the store; "
            "make it writable, or set MLFLOW_TRACKING_URI"
        )
    if not create or not write:
        return None
    from filelock import FileLock

    # MLflow creates a new store's tables on first use; two processes doing that at once fail
    # ("Online migration expected to match one row"). Opening under one lock per store makes
    # them take turns: the first creates, the others find the tables there.
    return FileLock(str(path) + ".lock", timeout=300)


def _check_database(uri: str, timeout: float) -> None:
    """A database server: its driver installed, its port answering, the login accepted."""
    from sqlalchemy.engine import make_url

    url = make_url(uri)
    shown = url.render_as_string(hide_password=True)
    backend = url.get_backend_name()
    try:
        url.get_dialect().import_dbapi()
    except ImportError as exc:
        module = (getattr(exc, "name", None) or "").split(".")[0]
        package = DRIVER_PACKAGES.get(module, module or "the database driver")
        raise TrackingError(
            f"tracking store {shown}: the {backend} driver ({module}) is not installed: pip install '{package}'"
        ) from None
    host, port = url.host or "localhost", url.port or DEFAULT_PORTS.get(backend, 0)
    if host.startswith("/") or not port:
        return  # a Unix socket: the connection below tells
    reason = unreachable(host, port, timeout)
    if reason:
        raise TrackingError(
            f"cannot reach {backend} at {host}:{port} for tracking store {shown} ({reason}): "
            "start the server, or set MLFLOW_TRACKING_URI to a reachable store"
        )
    import sqlalchemy

    connect_args = {"connect_timeout": max(1, round(timeout))} if backend in ("postgresql", "mysql") else {}
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, connect_args=connect_args)
    try:
        with engine.connect():
            pass
    except Exception as exc:
        cause = getattr(exc, "orig", exc)
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
        raise TrackingError(f"tracking store {shown} refused the connection: {first}") from None
    finally:
        engine.dispose()


def unreachable(host: str, port: int, timeout: float) -> str | None:
    """Why nothing answers on ``host:port`` within ``timeout`` seconds (lower case), or None."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        reason = f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        return reason.lower()
    return None


def _open(uri: str) -> None:
    """Open the store through MLflow (creating a SQLite store's tables): one short answer."""
    _quiet_mlflow()
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise TrackingError(f"tracking store {uri} is not usable: {first}") from None


# What a store says when another writer inserted the same unique row first: SQLite, PostgreSQL
# (psycopg 2 and 3), MySQL; over HTTP a tracking server passes its database's words on.
_LOST_RACE = (
    "UNIQUE constraint failed",
    "duplicate key value violates unique constraint",
    "UniqueViolation",
    "Duplicate entry",
)


def lost_insert_race(exc: BaseException) -> bool:
    """Whether ``exc`` is a store refusing a row that another writer inserted a moment before."""
    import sqlalchemy.exc

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, sqlalchemy.exc.IntegrityError) or any(s in str(seen) for s in _LOST_RACE):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def log_dataset(dataset: Any, context: str, tags: dict[str, str], attempts: int = 3) -> None:
    """``mlflow.log_input`` on the active run, again if it lost a race to insert the dataset.

    MLflow looks the dataset up in the experiment, then inserts it if it is new: two runs that
    log the same new dataset at once (the first trials of a sweep, two trainings on a new store)
    can both find none, and the second insert then fails on the unique key. Its transaction was
    rolled back, so the next try finds the other's row and links the run to it.
    """
    import mlflow

    for attempt in range(1, attempts + 1):
        try:
            mlflow.log_input(dataset, context=context, tags=tags)
            return
        except Exception as exc:
            if attempt == attempts or not lost_insert_race(exc):
                raise
            log.info("dataset %s was inserted by another run at the same time; linking to it", dataset.name)


def ui_hint(uri: str, experiment: str | None = None, run_id: str | None = None) -> str:
    """How to open an experiment (by name, or the one of ``run_id``) of the store at ``uri`` in
    MLflow's UI, in its Model training view: the page on a tracking server, or the ``mlflow ui``
    command and then the page."""
    c = client(uri)
    if run_id is not None:
        experiment_id: str | None = c.get_run(run_id).info.experiment_id
    else:
        found = c.get_experiment_by_name(experiment) if experiment else None
        experiment_id = found.experiment_id if found is not None else None
    page = f"#/experiments/{experiment_id}" if experiment_id else "#/experiments"
    if urlparse(uri).scheme in ("http", "https"):
        return f"open the UI: {uri.rstrip('/')}/{page}?{record.UI_MODEL_TRAINING}"
    return f"open the UI: mlflow ui --backend-store-uri {uri}, then http://127.0.0.1:5000/{page}?{record.UI_MODEL_TRAINING}"


def client(uri: str) -> Any:
    """An ``MlflowClient`` for ``uri``."""
    _quiet_mlflow()
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def find_run(uri: str, ref: str) -> Any:
    """The run that ``ref`` names: a whole run id or any unique prefix of one (as ``runs list``
    shows them).

    Raises:
        RunNotFoundError: no run matches, or several do (the message lists them).
    """
    import re

    from mlflow.entities import ViewType

    wanted = ref.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{1,32}", wanted):
        raise RunNotFoundError(f"{ref!r} is not a run id (hexadecimal, as `mnistops runs list` shows): check it")
    if len(wanted) == 32:
        return get_run(uri, wanted)
    c = client(uri)
    experiments = [e.experiment_id for e in c.search_experiments(view_type=ViewType.ALL)]
    matches: list[Any] = []
    token = None
    while experiments:
        page = c.search_runs(experiments, run_view_type=ViewType.ALL, max_results=5000, page_token=token)
        matches += [r for r in page if r.info.run_id.startswith(wanted)]
        token = page.token
        if not token:
            break
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise RunNotFoundError(f"no run {ref!r} in {uri}: see `mnistops runs list`")
    listed = ", ".join(f"{r.info.run_id[:12]} ({r.data.tags.get('mlflow.runName', '')})" for r in matches[:5])
    more = f" and {len(matches) - 5} more" if len(matches) > 5 else ""
    raise RunNotFoundError(f"run id {ref!r} matches {len(matches)} runs: {listed}{more}; give more of the id")


def get_run(uri: str, run_id: str) -> Any:
    """Fetch a run; a one-line RunNotFoundError when it does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client(uri).get_run(run_id)
    except MlflowException:
        raise RunNotFoundError(f"no run {run_id!r} in {uri}: see `mnistops runs list`") from None


def artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: ``mlruns/`` beside a SQLite store's file.

    MLflow's own default is ``./mlruns`` in the working folder of whichever process creates the
    experiment, so a notebook kernel (working in ``notebooks/``) would scatter artifacts away
    from the store. None for other stores (their server decides).
    """
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///")
    if not path or path == ":memory:":
        return None
    return (Path(path).expanduser().resolve().parent / "mlruns").as_uri()


def ensure_experiment(uri: str, name: str) -> None:
    """Create experiment ``name`` if it does not exist, with its artifacts at :func:`artifact_root`,
    tagged as a classification project (``mlflow.experimentKind``): without the tag MLflow's UI
    opens it as GenAI evaluation runs. An experiment made before the tag existed gets it now."""
    from mlflow.exceptions import MlflowException

    c = client(uri)
    kind = {record.EXPERIMENT_KIND: record.CLASSIFICATION}
    existing = c.get_experiment_by_name(name)
    if existing is not None:
        if record.EXPERIMENT_KIND not in existing.tags:
            c.set_experiment_tag(existing.experiment_id, record.EXPERIMENT_KIND, record.CLASSIFICATION)
        return
    try:
        c.create_experiment(name, artifact_location=artifact_root(uri), tags=kind)
    except MlflowException:
        if c.get_experiment_by_name(name) is None:  # not a race with another process: a real error
            raise


class RunLog:
    """A run's own log: every record of the ``mnistops`` loggers (INFO and up) from the moment it
    is opened, so a run's ``run.log`` starts where the command starts (loading the data, checking
    the store), not where the MLflow run does. Its folder is named after the process
    (:mod:`mnistops.processes`), so a killed process's log is swept by the next command."""

    def __init__(self) -> None:
        self.folder = Path(processes.temp_dir("log"))
        self.path = self.folder / "run.log"
        self._handler = logging.FileHandler(self.path)
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._logger = logging.getLogger("mnistops")
        self._logger.addHandler(self._handler)
        self._old_level = self._logger.level
        if self._logger.getEffectiveLevel() > logging.INFO:
            self._logger.setLevel(logging.INFO)

    def close(self) -> None:
        """Stop recording (the file stays until :meth:`remove`)."""
        if self._handler in self._logger.handlers:
            self._handler.close()
            self._logger.removeHandler(self._handler)
            self._logger.setLevel(self._old_level)

    def remove(self) -> None:
        """Stop recording and delete the file and its folder."""
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def tracked_run(
    uri: str, experiment: str, run_name: str | None, tags: dict[str, str], run_log: RunLog | None = None
) -> Iterator[Any]:
    """Start a run and make sure it ends: FINISHED, FAILED (exception) or KILLED (signal).

    The run's log records (logger ``mnistops``) go to ``run.log``, uploaded at the end: those of
    ``run_log`` when given (opened when the command started), else from now on.
    """
    import mlflow

    _quiet_mlflow()
    mlflow.set_tracking_uri(uri)
    try:
        ensure_experiment(uri, experiment)
        mlflow.set_experiment(experiment)
    except Exception as exc:
        raise TrackingError(f"cannot use experiment {experiment!r} in {uri}: {str(exc).splitlines()[0]}") from None
    run_log = run_log or RunLog()
    run = mlflow.start_run(run_name=run_name, tags={**tags, **owner_tags()})
    log.info("run %s started in experiment %r of %s", run.info.run_id, experiment, uri)
    status, full = "FAILED", None
    try:
        yield run
        status = "FINISHED"
    except (KeyboardInterrupt, Terminated):
        status = "KILLED"
        log.error("run %s interrupted", run.info.run_id)
        raise
    except BaseException as exc:
        full = no_space(exc, sqlite_path(uri) or uri)
        said = str(full or exc).strip()
        log.error("run %s failed: %s", run.info.run_id, said.splitlines()[0] if said else type(exc).__name__)
        if full is not None:  # one line, not the store's tracebacks
            raise full from None
        raise
    finally:
        log.info("run %s ends %s", run.info.run_id, status)
        run_log.close()
        with contextlib.suppress(Exception):
            mlflow.log_artifact(str(run_log.path))
        try:
            mlflow.end_run(status)
        except Exception as exc:  # the store went away or is full: the next command ends it (housekeeping)
            log.error("could not mark run %s %s: %s", run.info.run_id, status, str(exc).splitlines()[0])
            with contextlib.suppress(Exception):
                mlflow.end_run(status)  # at least this process's notion of the active run
        run_log.remove()
