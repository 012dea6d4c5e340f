"""The prediction log: every prediction, for monitoring (``mnistops monitor`` reads it).

One SQLite table, ``predictions``: time, model name and version, the 28x28 input as 784 bytes,
the predicted class, its probability, and the endpoint. Requests only put rows on a queue; a
writer thread inserts them in batches, so a request never waits on the disk. On shutdown the
queue is drained before the file is closed: nothing queued is lost. Retention keeps at most
``max_rows`` rows and none older than ``max_age_s`` seconds.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    image BLOB NOT NULL,
    label INTEGER NOT NULL,
    confidence REAL NOT NULL,
    endpoint TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts);
"""
_STOP = object()


class PredictionLog:
    """Queue rows from any thread; a writer thread inserts them (see the module's docstring)."""

    def __init__(
        self, path: Path, max_rows: int = 1_000_000, max_age_s: float = 30 * 86400, flush_s: float = 0.2
    ) -> None:
        self.path, self.max_rows, self.max_age_s, self.flush_s = path, max_rows, max_age_s, flush_s
        self.queue: queue.Queue[Any] = queue.Queue()
        self.written = 0
        with sqlite3.connect(path) as db:  # created now: a bad path fails the start, not a request
            db.executescript(SCHEMA)
            db.execute("PRAGMA journal_mode=WAL")
        self.thread = threading.Thread(target=self._write, name="mnistops-predlog", daemon=True)
        self.thread.start()

    def add(self, model: str, version: str, images: np.ndarray, proba: np.ndarray, endpoint: str) -> None:
        """Queue one row per image (``uint8 (n, 28, 28)``, probabilities ``(n, 10)``)."""
        now = time.time()
        labels = proba.argmax(axis=1)
        for image, label, p in zip(images, labels, proba, strict=True):
            self.queue.put(
                (now, model, version, image.astype(np.uint8).tobytes(), int(label), float(p[label]), endpoint)
            )

    def close(self) -> None:
        """Write everything queued, then stop."""
        self.queue.put(_STOP)
        self.thread.join()

    def _write(self) -> None:
        db = sqlite3.connect(self.path)
        stopping = False
        try:
            while not stopping:
                rows = []
                try:
                    item = self.queue.get(timeout=self.flush_s)
                except queue.Empty:
                    continue
                while True:
                    if item is _STOP:
                        stopping = True
                    else:
                        rows.append(item)
                    try:
                        item = self.queue.get_nowait()
                    except queue.Empty:
                        break
                if rows:
                    with db:
                        db.executemany(
                            "INSERT INTO predictions (ts, model, version, image, label, confidence, "
                            "endpoint) VALUES (?, ?, ?, ?, ?, ?, ?)",
                            rows,
                        )
                    self.written += len(rows)
                    self._retain(db)
        except sqlite3.Error:
            log.exception("the prediction log %s could not be written", self.path)
        finally:
            db.close()

    def _retain(self, db: sqlite3.Connection) -> None:
        with db:
            db.execute("DELETE FROM predictions WHERE ts < ?", (time.time() - self.max_age_s,))
            db.execute("DELETE FROM predictions WHERE id <= (SELECT MAX(id) FROM predictions) - ?", (self.max_rows,))


def read(path: Path, since: float = 0.0, until: float | None = None) -> dict[str, np.ndarray]:
    """The log's rows from ``since`` to ``until`` (seconds since the epoch): ``ts``, ``version``,
    ``images`` (``uint8 (n, 28, 28)``), ``label``, ``confidence``."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT ts, version, image, label, confidence FROM predictions WHERE ts >= ? AND ts <= ? ORDER BY id",
            (since, until if until is not None else time.time() + 1),
        ).fetchall()
    images = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.uint8).reshape(len(rows), 28, 28)
    return {
        "ts": np.array([r[0] for r in rows]),
        "version": np.array([r[1] for r in rows]),
        "images": images,
        "label": np.array([r[3] for r in rows], dtype=np.int64),
        "confidence": np.array([r[4] for r in rows]),
    }
