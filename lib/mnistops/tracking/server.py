"""``mnistops tracking-server``: MLflow's own tracking server, started with the right flags.

A team shares one record of runs and models by pointing ``MLFLOW_TRACKING_URI`` at one MLflow
server backed by a database (PostgreSQL) and an artifact folder. This module grows nothing of its
own: it checks what ``mlflow server`` would otherwise fail on slowly or obscurely (the database
unreachable, its driver missing, the port taken, basic auth without its secret key or first
admin password), then runs ``mlflow server`` as a child process, prints the URI to export once
the server answers, and stops it (by its PID) when stopped itself. See ``docs/team.md``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from mnistops import processes
from mnistops.errors import ConfigError, MissingExtraError, TrackingError
from mnistops.tracking import housekeeping, store

log = logging.getLogger(__name__)

SECRET_ENV, ADMIN_PASSWORD_ENV, ADMIN_USER_ENV = (
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "MLFLOW_AUTH_ADMIN_USERNAME",
)


@dataclass
class ServerPlan:
    """What ``mlflow server`` is started with."""

    backend: str
    artifacts: Path
    host: str
    port: int
    auth: bool
    auth_db: str | None
    workers: int

    @property
    def uri(self) -> str:
        """What clients set ``MLFLOW_TRACKING_URI`` to."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def command(self) -> list[str]:
        """The ``mlflow server`` command line."""
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            self.backend,
            "--artifacts-destination",
            str(self.artifacts),
            "--serve-artifacts",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        ]
        if self.auth:
            cmd += ["--app-name", "basic-auth"]
        return cmd


def default_auth_db(backend: str) -> str:
    """Where basic auth keeps its users: beside a SQLite store, or in the same database."""
    path = store.sqlite_path(backend)
    if path is not None:
        return f"sqlite:///{path.parent / 'basic_auth.db'}"
    return backend


def plan(
    backend: str,
    artifacts: Path | None,
    host: str,
    port: int,
    auth: bool,
    auth_db: str | None = None,
    workers: int = 2,
    timeout: float = 5.0,
) -> ServerPlan:
    """Check everything the server needs, in seconds, and say what will run; one-line errors.

    Raises:
        TrackingError: the database is unreachable, refuses the login, or its driver is missing.
        ConfigError: the port is taken; ``--auth`` without its secret key or first admin password.
        MissingExtraError: ``--auth`` without Flask-WTF (the ``auth`` extra).
    """
    backend = store.absolute_uri(backend)
    scheme = urlparse(backend).scheme
    if scheme in ("http", "https", "file", ""):
        raise ConfigError(
            f"--backend {backend}: give a database (postgresql://USER@HOST:PORT/DB or "
            "sqlite:///PATH), not a server or a folder"
        )
    store.check_store(backend, create=True, timeout=timeout)
    housekeeping.tidy(backend)
    if artifacts is None:
        sqlite = store.sqlite_path(backend)
        artifacts = (sqlite.parent if sqlite is not None else Path.cwd()) / "mlartifacts"
    artifacts = artifacts.expanduser().resolve()
    if not artifacts.parent.is_dir():
        raise ConfigError(f"--artifacts {artifacts}: folder {artifacts.parent} does not exist; create it first")
    _check_port(host, port)
    db = None
    if auth:
        try:
            import flask_wtf  # noqa: F401
        except ImportError:
            raise MissingExtraError("--auth needs Flask-WTF: pip install 'mnistops[auth]'") from None
        if not os.environ.get(SECRET_ENV):
            raise ConfigError(
                f"--auth: set {SECRET_ENV} to a secret string (the same on every server of the "
                "team; it protects the login forms)"
            )
        db = store.absolute_uri(auth_db or default_auth_db(backend))
        if not os.environ.get(ADMIN_PASSWORD_ENV) and not _has_users(db):
            raise ConfigError(
                f"--auth: set {ADMIN_PASSWORD_ENV} to the first admin's password (user "
                f"{os.environ.get(ADMIN_USER_ENV, 'admin')}); it is read once, when {db} "
                "has no users yet"
            )
        if 0 < len(os.environ.get(ADMIN_PASSWORD_ENV, "")) < 12:
            raise ConfigError(
                f"--auth: {ADMIN_PASSWORD_ENV} is shorter than the 12 characters MLflow asks of a "
                "password: choose a longer one"
            )
    return ServerPlan(backend, artifacts, host, port, auth, db, workers)


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port} ({(exc.strerror or str(exc)).lower()}): "
                "pass another --port, or stop what uses it"
            ) from None


def _has_users(db: str) -> bool:
    """Whether basic auth's user table exists in ``db`` (then no first password is needed)."""
    path = store.sqlite_path(db)
    if path is not None and not path.exists():
        return False
    import sqlalchemy

    engine = sqlalchemy.create_engine(db, poolclass=sqlalchemy.pool.NullPool)
    try:
        return "users" in sqlalchemy.inspect(engine).get_table_names()
    except Exception:
        return False
    finally:
        engine.dispose()


def _auth_ini(folder: Path, db: str) -> Path:
    """basic auth's config: its user database, READ for everyone by default."""
    ini = folder / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {db}\n"
        f"admin_username = {os.environ.get(ADMIN_USER_ENV, 'admin')}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "grant_default_workspace_access = false\n"
        # Without a cache every request re-derives the password's PBKDF2 hash: a training run's
        # hundred requests took 30 s instead of 3. A changed password takes effect within a minute.
        "auth_cache_ttl_seconds = 60\n"
    )
    return ini


def wait_ready(uri: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Until ``/health`` answers; a one-line error if the server exits or stays silent."""
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TrackingError(
                f"mlflow server exited with code {proc.returncode} before it answered; see its output above"
            )
        with contextlib.suppress(requests.RequestException):
            if requests.get(uri + "/health", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise TrackingError(f"mlflow server did not answer at {uri} within {timeout:g} s")


def run(p: ServerPlan, announce: Callable[[str], None], ready_timeout: float = 120.0) -> int:
    """Run ``mlflow server`` until it exits or this process is stopped; return its exit code.

    SIGINT and SIGTERM are passed on to the server (by its PID); if it has not stopped 20 s
    later it is killed. The server never outlives this process's own handling of a signal.
    """
    with processes.temporary_directory("tracking-server") as tmp:
        # The server's temporary files (its database lock, uploads in passing) go in a folder of
        # this process, removed when the server stops.
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "TMPDIR": tmp}
        if p.auth and p.auth_db:
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(_auth_ini(Path(tmp), p.auth_db))
        # The server's own log goes to stderr: stdout carries only the line to export.
        # Tied to this process: the server and its workers end with it, even if it is SIGKILLed.
        proc = subprocess.Popen(processes.tied(p.command()), env=env, start_new_session=True, stdout=sys.stderr)
        stopping: list[int] = []

        def forward(signum: int, frame: object) -> None:
            stopping.append(signum)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)

        old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            wait_ready(p.uri, proc, ready_timeout)
            announce(p.uri)
            while proc.poll() is None:
                try:
                    proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    continue
            return 0 if stopping else int(proc.returncode or 0)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
