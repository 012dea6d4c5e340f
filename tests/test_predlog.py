"""The prediction log outlives its faults: a real second process holding SQLite's write lock, a real
full disk (a small tmpfs, where the tests run as root), a bounded queue. Nothing answered is lost
but what the bound says, and that is counted."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mnistops.tracking.predlog import PredictionLog
from support import LOCKER, fill, tiny_disk


def add(log: PredictionLog, n: int, version: str = "1") -> None:
    """``n`` predictions, one image each, as the server adds them."""
    images = np.zeros((1, 28, 28), np.uint8)
    proba = np.full((1, 10), 0.1)
    for _ in range(n):
        log.add("m", version, images, proba, "/predict")


def rows(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0])


def wait_for(condition: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.05)


@pytest.mark.slow  # an 8-second lock, as in the report
def test_rows_answered_while_another_process_holds_the_lock_are_all_written(tmp_path: Path) -> None:
    path = tmp_path / "predictions.db"
    errors, dropped = [], []
    log = PredictionLog(path, flush_s=0.05, on_error=errors.append, on_drop=dropped.append)
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(path), "8"], stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        add(log, 30)
        wait_for(lambda: log.failing_since is not None)
        health = log.health()
        assert health is not None and "not written since" in health and "database is locked" in health
        assert "30 rows wait, 0 dropped" in health and log.written == 0
        assert locker.wait(timeout=60) == 0  # the lock is gone after 8 s
        wait_for(lambda: log.written == 30)
        assert log.health() is None
        add(log, 220)  # the writer kept going: this is where the old log had stopped for good
    finally:
        locker.kill()
        log.close()
    assert rows(path) == 250 and log.written == 250
    assert log.dropped == 0 and dropped == []
    assert log.errors >= 3 and len(errors) == log.errors  # each failed write counted, then tried again


def test_past_its_bound_rows_are_dropped_and_counted_and_the_rest_written(tmp_path: Path) -> None:
    path = tmp_path / "predictions.db"
    dropped: list[int] = []
    log = PredictionLog(path, flush_s=0.05, queue_max=50, on_drop=dropped.append)
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(path), "3"], stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        add(log, 1)
        wait_for(lambda: log.failing_since is not None)  # the writer holds that row and waits
        add(log, 80)  # 50 fit in the queue, 30 do not
        assert sum(dropped) == 30 == log.dropped
        assert "30 dropped" in (log.health() or "")
        locker.wait(timeout=60)
    finally:
        locker.kill()
        log.close()
    assert rows(path) == 51


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="needs root and mount")
def test_rows_answered_while_the_disk_is_full_are_all_written_once_it_is_freed(tmp_path: Path) -> None:
    with tiny_disk(tmp_path / "disk") as disk:
        path = disk / "predictions.db"
        log = PredictionLog(path, flush_s=0.05)
        try:
            filler = fill(disk)
            add(log, 40)  # 40 rows of 784 bytes each: more than the few bytes left
            wait_for(lambda: log.failing_since is not None)
            assert "not written since" in (log.health() or "")  # SQLite: "disk I/O error" (WAL) or "disk is full"
            time.sleep(1.0)  # a few seconds of a full disk, the writer trying again
            filler.unlink()
            wait_for(lambda: log.written == 40)
            add(log, 60)
        finally:
            log.close()
        assert rows(path) == 100 and log.dropped == 0 and log.errors >= 1
