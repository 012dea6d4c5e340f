"""Run the server: in this process (``mnistops serve``), or as a child process that whoever starts
it stops by its pid (a notebook, a test, a benchmark). Always on loopback unless told otherwise.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnistops.config import Config
from mnistops.errors import MnistopsError
from mnistops.tracking import logdb


def preflight(cfg: Config, tracking_uri: str) -> str | None:
    """Check what would otherwise fail after the server started, and fail now with one line.

    The port must be free on the host, the prediction log's folder must exist and be writable, and
    a model named with ``serve.model`` must exist. The default ``@champion`` may be missing: the
    server starts anyway and answers ``/ready`` with 503 until a model is promoted (what that
    says is returned, for the command to print).

    Raises:
        MnistopsError: what was wrong and what to do, in one line.
    """
    from mnistops.lifecycle import versions

    s = cfg.serve
    with socket.socket() as sock:
        try:
            sock.bind((s.host, s.port))
        except OSError as exc:
            raise MnistopsError(
                f"cannot listen on {s.host}:{s.port}: {exc.strerror or exc}; pick another with --port"
            ) from None
    if s.prediction_log and logdb.is_url(s.prediction_log):
        _check_log_database(s.prediction_log)
    elif s.prediction_log:
        folder = Path(s.prediction_log).resolve().parent
        if not folder.is_dir():
            raise MnistopsError(
                f"the prediction log's folder {folder} does not exist: create it or set serve.prediction_log"
            )
        if not os.access(folder, os.W_OK):
            raise MnistopsError(
                f"the prediction log's folder {folder} is not writable: set serve.prediction_log elsewhere"
            )
    try:
        versions.resolve(versions.model_uri(s, cfg.tracking.registered_model), tracking_uri)
    except MnistopsError as exc:
        if s.model:
            raise
        return f"{exc}; /ready answers 503 until one is promoted (mnistops promote)"
    return None


def _check_log_database(url: str) -> None:
    """A PostgreSQL prediction log answers and takes its tables, or the start fails in one line."""
    try:
        logdb.create(url)
    except logdb.errors() as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MnistopsError(
            f"the prediction log's database {logdb.describe(url)} cannot be used ({first}): "
            "start it, or set serve.prediction_log to a file"
        ) from None


def run(cfg: Config, tracking_uri: str) -> None:
    """Serve until SIGTERM or Ctrl-C (uvicorn's graceful shutdown: the prediction log is drained)."""
    import uvicorn

    # uvicorn shuts down gracefully on SIGTERM (requests finish, the prediction log is drained),
    # then raises the signal again: a stop that went as planned exits 0.
    signal.signal(signal.SIGTERM, _stopped)
    s = cfg.serve
    if s.workers == 1:
        from mnistops.serve.app import create_app

        app = create_app(s, tracking_uri, cfg.tracking.registered_model)
        uvicorn.run(app, host=s.host, port=s.port, log_level="warning", access_log=False)
        return
    # Several worker processes build the app from the environment, and sum their metrics.
    from mnistops import processes

    os.environ["MNISTOPS_SERVE"] = json.dumps(
        {
            "serve": s.model_dump(mode="json"),
            "tracking_uri": tracking_uri,
            "registered_model": cfg.tracking.registered_model,
        }
    )
    with processes.temporary_directory("prometheus") as metrics_dir:  # removed when the server stops
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        uvicorn.run(
            "mnistops.serve.app:from_environment",
            factory=True,
            host=s.host,
            port=s.port,
            workers=s.workers,
            log_level="warning",
            access_log=False,
        )


def _stopped(signum: int, frame: object) -> None:
    raise SystemExit(0)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A server process started by :func:`start`; stop it with :meth:`stop` (by its pid)."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path
    own_log: bool = False  # the log is ours to remove when the server stopped cleanly

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.process.pid

    def get(self, path: str, timeout: float = 10) -> Any:
        """``GET path`` as JSON (or text for ``/metrics``)."""
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            body = r.read()
        return body.decode() if path == "/metrics" else json.loads(body)

    def post(self, path: str, body: bytes, content_type: str = "application/json", timeout: float = 30) -> Any:
        """``POST path`` with ``body``; the JSON answer (an error's too, with its status)."""
        request = urllib.request.Request(self.url + path, data=body, headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return {"status": exc.code, **json.loads(exc.read() or b"{}")}

    def predict(self, images: Any) -> Any:
        """``POST /predict`` of ``uint8 (n, 28, 28)`` images; the answer."""
        import numpy as np

        return self.post("/predict", json.dumps({"images": np.asarray(images).tolist()}).encode())

    def predict_image(self, data: bytes, content_type: str = "image/png") -> Any:
        """``POST /predict/image`` of a PNG or JPEG file's bytes; the answer."""
        return self.post("/predict/image", data, content_type)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, wait (the server drains its prediction log), SIGKILL if it will not go."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:  # the guard's whole group: the server and its workers
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        atexit.unregister(self.stop)
        if self.own_log and self.process.returncode == 0:
            self.log.unlink(missing_ok=True)
            self.log.parent.rmdir()
        return int(self.process.returncode)


def start(
    args: list[str] | None = None,
    port: int | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
    log: Path | None = None,
) -> Server:
    """``mnistops serve ARGS`` on 127.0.0.1 and a free port, once ``/health`` answers (see
    :func:`wait_ready` for a model). Its output goes to ``log`` (default: a temporary file removed
    when the server stops cleanly).

    Raises:
        MnistopsError: the server exited, or did not answer within ``timeout`` seconds; the end of
            its output is in the message.
    """
    port = port or free_port()
    own_log = log is None
    if log is None:  # kept only if the server fails, for whoever looks into why
        from mnistops import processes

        log = Path(processes.temp_dir("serve")) / "serve.log"
    with open(log, "wb") as out:
        from mnistops import processes

        command = [sys.executable, "-m", "mnistops", "serve", "--host", "127.0.0.1", "--port", str(port)]
        process = subprocess.Popen(  # tied: the server ends with whoever started it, however it ends
            processes.tied([*command, *(args or [])]),
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(process, f"http://127.0.0.1:{port}", log, own_log)
    atexit.register(server.stop)  # a notebook's kernel that ends (or fails) takes its server with it
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-1500:]
            last = (tail.strip().splitlines() or ["no output"])[-1]
            raise MnistopsError(f"the server exited with {process.returncode}: {last} (its output: {log})")
        try:
            server.get("/health", timeout=2)
            return server
        except (OSError, ValueError):
            time.sleep(0.2)
    server.stop()
    raise MnistopsError(f"the server did not answer within {timeout:g} s; its output is in {log}")


def wait_ready(server: Server, timeout: float = 120) -> dict[str, Any]:
    """Wait until the server has a model loaded; its ``/ready`` answer.

    Raises:
        MnistopsError: the server exited, or loaded no model within ``timeout`` seconds; the last
            line of its output (why the model did not load) is in the message.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer: dict[str, Any] = server.get("/ready", timeout=2)
            return answer
        except OSError:  # refused, or 503 (urllib's HTTPError) until a model loads
            if server.process.poll() is not None or time.monotonic() > deadline:
                lines = server.log.read_text(errors="replace").strip().splitlines() if server.log.exists() else []
                what = "exited" if server.process.poll() is not None else f"loaded no model within {timeout:g} s"
                raise MnistopsError(
                    f"the server at {server.url} {what}: {(lines or ['no output'])[-1].strip()}"
                ) from None
            time.sleep(0.2)


@dataclass(frozen=True)
class Choice:
    """The model a notebook serves: its URI, registered version and training run."""

    uri: str
    version: str
    run_id: str
    why: str


def pick_model(tracking_uri: str, registered_model: str = "mnist-classifier", model: str = "") -> Choice:
    """``model`` if given, else ``@champion``, else the newest registered version (a store where
    nothing was promoted yet, as after a batch that only trained).

    Raises:
        MnistopsError: nothing is registered under ``registered_model``, or ``model`` is not there.
    """
    from mnistops.lifecycle import versions
    from mnistops.tracking.store import client

    if model:
        _, version, run_id = versions.resolve(model, tracking_uri)
        return Choice(model, version, run_id, "as asked")
    try:
        _, version, run_id = versions.resolve(f"models:/{registered_model}@champion", tracking_uri)
        return Choice(f"models:/{registered_model}@champion", version, run_id, "the champion")
    except MnistopsError:
        pass
    registered = client(tracking_uri).search_model_versions(f"name = '{registered_model}'")
    if not registered:
        raise MnistopsError(
            f"no model is registered as {registered_model} in {tracking_uri}: "
            "train one first (03_train or mnistops train)"
        )
    newest = max(registered, key=lambda v: int(v.version))
    uri = f"models:/{registered_model}/{newest.version}"
    return Choice(uri, str(newest.version), str(newest.run_id), "the newest version (nothing is @champion yet)")
