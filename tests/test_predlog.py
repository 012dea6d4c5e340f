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


def test_feedback_labels_logged_predictions_once_and_all_or_none(tmp_path: Path) -> None:
    from mnistops.tracking import predlog

    path = tmp_path / "log.db"
    log = PredictionLog(path, flush_s=0.01)
    proba = np.eye(10)[[3, 5, 7]] * 0.9 + 0.01  # predicted 3, 5, 7
    ids = log.add("m", "1", np.zeros((3, 28, 28), np.uint8), proba, "/predict")
    assert len(set(ids)) == 3 and all(len(i) == 32 for i in ids)
    assert log.flush(10) and rows(path) == 3
    assert predlog.live_accuracy(path) == (None, 0)

    assert predlog.add_feedback(path, [(ids[0], 3, False), (ids[1], 4, False)]) == [(3, 3), (5, 4)]
    assert predlog.live_accuracy(path) == (0.5, 2)
    # Unknown ids and labels already given refuse the whole request: the third id stays unlabeled.
    with pytest.raises(predlog.UnknownPredictionError) as unknown:
        predlog.add_feedback(path, [(ids[2], 7, False), ("f" * 32, 1, False)])
    assert unknown.value.ids == ["f" * 32]
    with pytest.raises(predlog.AlreadyLabeledError) as taken:
        predlog.add_feedback(path, [(ids[2], 7, False), (ids[0], 8, False)])
    assert taken.value.ids == [ids[0]]
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert dict(db.execute("SELECT pid, label FROM feedback").fetchall()) == {ids[0]: 3, ids[1]: 4}
    # The first label wins unless the sender replaces it.
    assert predlog.add_feedback(path, [(ids[1], 5, True), (ids[2], 7, False)]) == [(5, 5), (7, 7)]
    assert predlog.live_accuracy(path) == (1.0, 3)
    log.close()


def test_a_log_from_before_prediction_ids_gains_the_column_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "CREATE TABLE predictions (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, model TEXT NOT NULL,"
            " version TEXT NOT NULL, image BLOB NOT NULL, label INTEGER NOT NULL, confidence REAL NOT NULL,"
            " endpoint TEXT NOT NULL)"
        )
        db.execute("INSERT INTO predictions VALUES (1, ?, 'm', '1', ?, 2, 0.9, '/predict')", (time.time(), bytes(784)))
    log = PredictionLog(path, flush_s=0.01)
    add(log, 2)
    assert log.flush(10)
    log.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        pids = [r[0] for r in db.execute("SELECT pid FROM predictions ORDER BY id")]
    assert len(pids) == 3 and pids[0] is None and all(len(p) == 32 for p in pids[1:])
