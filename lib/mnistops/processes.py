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
