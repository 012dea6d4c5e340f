"""One lock for the read-decide-write of ``@champion`` and ``@previous``.

``promote`` reads the champion, scores, and moves the aliases; ``rollback`` reads the champion's
history and moves them back. Two of them at once, unserialised, can each decide on the state before
the other's write and leave the registry in a state neither order produces (``@champion`` back on
a version just rolled back). :func:`alias_lock` makes them take turns: the second waits, then
decides on what the first left.

Which lock, by store:

* **SQLite** (``sqlite:///...``): a file lock (``filelock``) in the store's artifact folder
  (``mlruns/.<model>.aliases.lock``, beside ``mlflow.db`` when there is none), which every process
  using that file can see. The kernel drops it when its holder dies, however it dies.
* **A tracking server or a database** (``http(s)://``, ``postgresql://``, ...): a registered model
  named ``<model>.aliases-lock``, created to take the lock and deleted to give it back. Creating a
  registered model is atomic in every MLflow store (its name is unique: the second creation is
  refused), it holds across machines, and it needs nothing but the MLflow API that every client
  already speaks. It names its holder (host, pid, start) in tags; a holder that is gone (a
  process of this host that no longer runs, or a lock older than :data:`STALE_S`) is broken by the
  next command, as runs left RUNNING are.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mnistops import processes, record
from mnistops.errors import GateError

log = logging.getLogger(__name__)

STALE_S = 1800.0  # a registry lock older than this is taken to be left by a process that is gone
HOLDER, STARTED, SINCE = record.LOCK_HOLDER, record.LOCK_STARTED, record.LOCK_SINCE


@contextlib.contextmanager
def alias_lock(uri: str, name: str, wait_s: float) -> Iterator[None]:
    """Hold the alias lock of registered model ``name`` in the store at ``uri`` (see the module).

    Raises:
        GateError: another command held it for longer than ``wait_s`` seconds (``gate.lock_wait_s``).
    """
    from mnistops.tracking.store import sqlite_path

    db = sqlite_path(uri)
    held = _file_lock(db, name, wait_s) if db is not None else _registry_lock(uri, name, wait_s)
    with held:
        yield


@contextlib.contextmanager
def _file_lock(db: Path, name: str, wait_s: float) -> Iterator[None]:
    from filelock import FileLock, Timeout

    folder = db.parent / "mlruns"
    path = (folder if folder.is_dir() else db.parent) / f".{name}.aliases.lock"
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=wait_s)
    except Timeout:
        raise GateError(
            f"another promote or rollback of {name!r} has held {path} for {wait_s:.0f} s: try again once it ends"
        ) from None
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def _registry_lock(uri: str, name: str, wait_s: float) -> Iterator[None]:
    from mnistops.tracking.store import client

    c = client(uri)
    lock_name = f"{name}.aliases-lock"
    pid, start = processes.identity()
    me = {HOLDER: f"{socket.gethostname()}:{pid}", STARTED: f"{start:.2f}", SINCE: f"{time.time():.2f}"}
    deadline, pause = time.monotonic() + wait_s, 0.1
    while not _create(c, lock_name, me):
        holder = _holder(c, lock_name)
        if holder is not None and _stale(holder):
            log.warning("breaking the alias lock of %r left by %s, which is gone", name, holder.get(HOLDER))
            with contextlib.suppress(Exception):
                c.delete_registered_model(lock_name)
            continue
        if time.monotonic() > deadline:
            who = holder.get(HOLDER, "another command") if holder else "another command"
            raise GateError(
                f"{who} has held the alias lock of {name!r} for {wait_s:.0f} s: try again once it ends "
                f"(if that process is gone, delete the registered model {lock_name!r})"
            )
        time.sleep(pause)
        pause = min(pause * 1.5, 2.0)
    try:
        yield
    finally:
        holder = _holder(c, lock_name)
        if holder is not None and holder.get(HOLDER) == me[HOLDER] and holder.get(STARTED) == me[STARTED]:
            c.delete_registered_model(lock_name)


def _create(c: Any, lock_name: str, tags: dict[str, str]) -> bool:
    """Take the lock: True if this call created the lock's registered model."""
    from mlflow.exceptions import MlflowException

    try:
        c.create_registered_model(lock_name, tags=tags, description="mnistops: a promote or rollback is running")
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_ALREADY_EXISTS":
            return False
        raise
    return True


def _holder(c: Any, lock_name: str) -> dict[str, str] | None:
    from mlflow.exceptions import MlflowException

    try:
        return dict(c.get_registered_model(lock_name).tags)
    except MlflowException:
        return None  # given back meanwhile


def _stale(holder: dict[str, str]) -> bool:
    """Whether the lock's holder is gone: a process of this host that no longer runs, or an old lock."""
    host, _, pid = holder.get(HOLDER, "").rpartition(":")
    try:
        since, started = float(holder.get(SINCE, "0")), float(holder.get(STARTED, "0"))
    except ValueError:
        return True
    if host == socket.gethostname() and pid.isdigit():
        return not processes.alive(int(pid), started)
    return time.time() - since > STALE_S
