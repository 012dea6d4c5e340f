"""Processes: this one's identity, whether another is still alive, and temporary folders named
after the process that made them.

A process is named by its pid and its start time, so that a pid the system later gives to
another process is not mistaken for it. Temporary folders are ``mnistops-<pid>-<start>-<kind>-*``
in the system's temporary folder; :func:`sweep` removes those whose process is gone (killed with
SIGKILL, by the OOM killer...), so nothing is left behind for long.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def started(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), or None if there is none."""
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, ValueError):
        return None


def alive(pid: int, start: float) -> bool:
    """Whether process ``pid`` runs and is the one that started at ``start`` (not a reused pid)."""
    now = started(pid)
    return now is not None and abs(now - start) < 2.0


def identity() -> tuple[int, float]:
    """This process's pid and start time."""
    pid = os.getpid()
    return pid, started(pid) or time.time()


def _prefix(kind: str) -> str:
    pid, start = identity()
    return f"mnistops-{pid}-{int(start)}-{kind}-"


def temp_dir(kind: str) -> str:
    """A new temporary folder named after this process (see :func:`sweep`)."""
    return tempfile.mkdtemp(prefix=_prefix(kind))


def temporary_directory(kind: str) -> Any:
    """A ``tempfile.TemporaryDirectory`` named after this process (see :func:`sweep`)."""
    return tempfile.TemporaryDirectory(prefix=_prefix(kind))


def sweep() -> list[Path]:
    """Remove the temporary folders of mnistops processes that are gone; return them."""
    removed = []
    for folder in Path(tempfile.gettempdir()).glob("mnistops-*-*-*"):
        parts = folder.name.split("-")
        try:
            pid, start = int(parts[1]), int(parts[2])
        except (IndexError, ValueError):
            continue
        if pid == os.getpid() or not folder.is_dir() or alive(pid, start):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
        log.info("removed %s, left by process %d", folder, pid)
    return removed


# Linux's prctl(2) option that sends the calling process a signal when its parent dies.
PR_SET_PDEATHSIG = 1


def tied(command: list[str]) -> list[str]:
    """``command`` run by a guard (``python -m mnistops.processes``) that ends it, and everything it
    started, when this process ends, however it ends: SIGKILL and the OOM killer included.

    Start it with ``start_new_session=True``: the guard then leads a process group of its own, which
    ``os.killpg`` of its pid ends whole. The guard asks Linux for a signal when its parent dies
    (``PR_SET_PDEATHSIG``) and then ends its group itself. A server's own children (MLflow's workers
    under its ``mlflow server`` process) are in that group: none is left holding a port.
    """
    return [sys.executable, "-m", "mnistops.processes", str(os.getpid()), *command]


def die_with_parent(parent: int | None = None) -> bool:
    """Ask Linux to send this process SIGTERM when its parent dies; False if the parent (``parent``,
    when given) is already gone, or where the system cannot (not Linux)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (AttributeError, OSError):
        return False
    return parent is None or os.getppid() == parent  # it may have died before we asked


def _guard(parent: int, command: list[str]) -> int:
    """Run ``command`` in this process's group until it exits, or until ``parent`` dies or this
    process is told to stop: then SIGTERM to the group, SIGKILL 20 s later. Its exit code."""
    import signal
    import subprocess

    if not die_with_parent(parent):
        return 1
    child = subprocess.Popen(command)
    stopping: list[float] = []

    def stop(signum: int, frame: object) -> None:  # only signals: the loop below does the waiting
        if not stopping:
            stopping.append(time.monotonic() + 20)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.killpg(0, signal.SIGTERM)  # the whole group: the command and whatever it started

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        try:
            code = child.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            if stopping and time.monotonic() > stopping[0]:
                os.killpg(0, signal.SIGKILL)  # this guard too, last
            continue
        return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(_guard(int(sys.argv[1]), sys.argv[2:]))
