"""The prediction log: every prediction, for monitoring (``mnistops monitor`` reads it).

One SQLite table, ``predictions``: time, model name and version, the 28x28 input as 784 bytes,
the predicted class, its probability, the endpoint, and the prediction's id (``pid``, which the
server answers with). Requests only put rows on a queue; a writer thread inserts them in batches,
so a request never waits on the disk. Retention keeps at most ``max_rows`` rows and none older than
``max_age_s`` seconds.

Beside it, ``feedback``: the true label of a prediction, sent back by whoever knows it
(``POST /feedback``); the first label wins unless it is replaced on purpose
(:func:`add_feedback`). :func:`live_accuracy` is the share of the newest labeled predictions the
model got right.

The log outlives its faults. A write that fails (another process holds the database's write lock,
the disk is full) is tried again, with a growing pause, until it succeeds: the rows wait in memory
meanwhile and are all written once the database accepts them. The queue is bounded
(``serve.log_queue_max`` rows): past it, predictions are still answered but their rows are dropped
and counted. Each episode (failing, dropping) is logged once when it starts and once when it ends;
:meth:`PredictionLog.health` says what is wrong while it lasts. On shutdown everything queued is
written, given a few seconds to get past a fault; what cannot be is counted as dropped and said.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mnistops.tracking import logdb
from mnistops.tracking.logdb import Target

log = logging.getLogger(__name__)

INSERT = (
    "INSERT INTO predictions (ts, model, version, image, label, confidence, endpoint, pid) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
BATCH_ROWS = 2000  # rows written in one transaction at most
GATHER_S = 0.05  # after a write of fewer rows, the writer waits this long for more
RETRY_FIRST_S, RETRY_MAX_S = 0.05, 2.0  # the pause after a failed write doubles up to this
CLOSE_TIMEOUT_S = 10.0  # how long shutdown waits for a failing database before giving up


def _ignore(_: int) -> None:
    return None


class PredictionLog:
    """Queue rows from any thread; a writer thread inserts them (see the module's docstring).

    Args:
        path: the SQLite file or PostgreSQL URL (:mod:`mnistops.tracking.logdb`; its tables are
            created now: a bad path fails the start, not a request).
        max_rows, max_age_s: retention.
        flush_s: how long the writer waits to gather rows.
        queue_max: rows that may wait; beyond, rows are dropped and counted.
        on_error: called with 1 for every failed write (a Prometheus counter's ``inc``).
        on_drop: called with the number of rows dropped.
    """

    def __init__(
        self,
        path: Target,
        max_rows: int = 1_000_000,
        max_age_s: float = 30 * 86400,
        flush_s: float = 0.2,
        queue_max: int = 100_000,
        on_error: Callable[[int], None] = _ignore,
        on_drop: Callable[[int], None] = _ignore,
    ) -> None:
        self.path, self.max_rows, self.max_age_s, self.flush_s = path, max_rows, max_age_s, flush_s
        self.where = logdb.describe(path)  # for messages: a URL without its password
        self.queue: queue.Queue[tuple[Any, ...]] = queue.Queue(maxsize=queue_max)
        self.on_error, self.on_drop = on_error, on_drop
        self.written = self.dropped = self.errors = 0
        self.failing_since: float | None = None  # when the current run of failed writes began
        self.last_error = ""
        self._dropping = 0  # rows dropped in the current episode (0: not dropping)
        self._holding = 0  # rows the writer has taken from the queue and not yet written
        self._stop = threading.Event()
        self.queued = 0  # rows given to add(), logged or dropped
        logdb.create(path)
        self.thread = threading.Thread(target=self._write, name="mnistops-predlog", daemon=True)
        self.thread.start()

    def add(self, model: str, version: str, images: np.ndarray, proba: np.ndarray, endpoint: str) -> list[str]:
        """Queue one row per image (``uint8 (n, 28, 28)``, probabilities ``(n, 10)``); never blocks.
        Returns each prediction's id (what ``POST /feedback`` names it by)."""
        now = time.time()
        labels = proba.argmax(axis=1)
        ids = [uuid.uuid4().hex for _ in range(len(images))]
        self.queued += len(ids)
        for image, label, p, pid in zip(images, labels, proba, ids, strict=True):
            row = (now, model, version, image.astype(np.uint8).tobytes(), int(label), float(p[label]), endpoint, pid)
            try:
                self.queue.put_nowait(row)
            except queue.Full:
                self._drop(1, "its queue is full")
        return ids

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every row queued so far is written (or dropped); False if ``timeout`` passed."""
        target, deadline = self.queued, time.monotonic() + timeout
        while self.written + self.dropped < target:
            if time.monotonic() > deadline or not self.thread.is_alive():
                return False
            time.sleep(0.005)
        return True

    def health(self) -> str | None:
        """What is wrong with the log now, in one line, or None when rows are being written."""
        if self.failing_since is None and not self._dropping:
            return None
        waiting = f"{self.queue.qsize() + self._holding:,} rows wait, {self.dropped:,} dropped"
        if self.failing_since is None:
            return f"rows are dropped: its queue is full ({waiting})"
        when = time.strftime("%H:%M:%S", time.localtime(self.failing_since))
        return f"not written since {when} ({self.last_error}); {waiting}"

    def close(self) -> None:
        """Write everything queued (waiting up to ``CLOSE_TIMEOUT_S`` on a failing database), then stop."""
        self._stop.set()
        self.thread.join()

    def _drop(self, n: int, why: str) -> None:
        if not self._dropping:
            log.warning("prediction log %s: %s; predictions are answered but not logged", self.where, why)
        self._dropping += n
        self.dropped += n
        self.on_drop(n)

    def _take(self) -> list[tuple[Any, ...]]:
        """Up to ``BATCH_ROWS`` queued rows, waiting up to ``flush_s`` for the first."""
        rows: list[tuple[Any, ...]] = []
        try:
            rows.append(self.queue.get(timeout=self.flush_s))
            while len(rows) < BATCH_ROWS:
                rows.append(self.queue.get_nowait())
        except queue.Empty:
            pass
        return rows

    def _write(self) -> None:
        while not (self._stop.is_set() and self.queue.empty()):
            rows = self._take()
            if rows and not self._insert(rows):
                self._drop(len(rows) + self._discard_queue(), "the database stayed unwritable at shutdown")
                return
            if rows and len(rows) < BATCH_ROWS:
                # Let the next rows gather: one transaction for many requests, rather than a
                # transaction (and a wake-up of this thread) per request under load.
                self._stop.wait(GATHER_S)

    def _insert(self, rows: list[tuple[Any, ...]]) -> bool:
        """Insert ``rows``, trying again until it works; False if shutdown's patience ran out.

        Each try opens the database anew: after an I/O error (a full disk under WAL) a connection
        can stay broken when the disk is back."""
        pause, deadline = RETRY_FIRST_S, None
        self._holding = len(rows)
        while True:
            try:
                with logdb.connect(self.path, timeout=1.0, autocommit=False) as db:
                    db.begin()
                    db.executemany(INSERT, rows)
                    self._retain(db)
                    db.commit()
            except logdb.errors() as exc:
                self._failed(exc)
                if self._stop.is_set():
                    deadline = deadline or time.monotonic() + CLOSE_TIMEOUT_S
                    if time.monotonic() > deadline:
                        return False
                time.sleep(pause)
                pause = min(pause * 2, RETRY_MAX_S)
                continue
            self.written += len(rows)
            self._holding = 0
            self._recovered()
            return True

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        self.on_error(1)
        self.last_error = str(exc) or type(exc).__name__
        if self.failing_since is None:
            self.failing_since = time.time()
            log.warning(
                "prediction log %s cannot be written (%s): its rows wait in memory and are tried again",
                self.where,
                self.last_error,
            )

    def _recovered(self) -> None:
        if self.failing_since is not None:
            log.warning(
                "prediction log %s is written again after %.1f s and %d failed writes",
                self.where,
                time.time() - self.failing_since,
                self.errors,
            )
            self.failing_since = None
        if self._dropping and self.queue.qsize() < self.queue.maxsize // 2:
            log.warning("prediction log %s: its queue drained; %d rows were dropped", self.where, self._dropping)
            self._dropping = 0

    def _discard_queue(self) -> int:
        n = 0
        while True:
            try:
                self.queue.get_nowait()
                n += 1
            except queue.Empty:
                return n

    def _retain(self, db: logdb.Db) -> None:
        db.execute("DELETE FROM predictions WHERE ts < ?", (time.time() - self.max_age_s,))
        db.execute("DELETE FROM predictions WHERE id <= (SELECT MAX(id) FROM predictions) - ?", (self.max_rows,))


def read(
    path: Target, since: float = 0.0, until: float | None = None, max_rows: int | None = None
) -> dict[str, np.ndarray]:
    """The log's rows from ``since`` to ``until`` (seconds since the epoch): ``ts``, ``model``,
    ``version``, ``pid``, ``images`` (``uint8 (n, 28, 28)``), ``label``, ``confidence``, and
    ``truth``: the label sent back through ``POST /feedback``, -1 where none was.

    Raises:
        DataError: ``path`` is not a prediction log of mnistops (not SQLite, no ``predictions``
            table), or the window holds more than ``max_rows`` rows.
    """
    from mnistops.errors import DataError

    until = until if until is not None else time.time() + 1
    try:
        with logdb.connect(path, timeout=5.0, readonly=True) as db:
            (n,) = db.execute("SELECT COUNT(*) FROM predictions WHERE ts >= ? AND ts <= ?", (since, until)).fetchone()
            if max_rows is not None and n > max_rows:
                raise DataError(
                    f"the prediction log {logdb.describe(path)} holds {n:,} predictions in that window; "
                    f"at most {max_rows:,} are checked at once (monitor.max_batch_images): give a shorter --since"
                )
            has_feedback = logdb.has_feedback(db)
            truth = "COALESCE(f.label, -1)" if has_feedback else "-1"
            joined = "LEFT JOIN feedback f ON f.pid = p.pid" if has_feedback else ""
            rows = db.execute(
                f"SELECT p.ts, p.version, p.image, p.label, p.confidence, {truth}, p.model, COALESCE(p.pid, '') "
                f"FROM predictions p {joined} WHERE p.ts >= ? AND p.ts <= ? ORDER BY p.id",
                (since, until),
            ).fetchall()
    except logdb.errors() as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if logdb.is_url(path):
            raise DataError(
                f"the prediction log's database {logdb.describe(path)} cannot be read ({first}): "
                "start it, or point serve.prediction_log at the servers' log"
            ) from None
        raise DataError(
            f"{logdb.describe(path)} is not a prediction log of mnistops serve ({first}): "
            "point serve.prediction_log at its file or database"
        ) from None
    if any(len(r[2]) != 784 for r in rows):
        where = logdb.describe(path)
        raise DataError(f"{where} holds images that are not 784 bytes: it is not a prediction log of mnistops serve")
    images = np.frombuffer(b"".join(bytes(r[2]) for r in rows), dtype=np.uint8).reshape(len(rows), 28, 28)
    return {
        "ts": np.array([r[0] for r in rows]),
        "version": np.array([r[1] for r in rows]),
        "images": images,
        "label": np.array([r[3] for r in rows], dtype=np.int64),
        "confidence": np.array([r[4] for r in rows]),
        "truth": np.array([r[5] for r in rows], dtype=np.int64),
        "model": np.array([r[6] for r in rows], dtype=str),
        "pid": np.array([r[7] for r in rows], dtype=str),
    }


def newest_since(path: Target, n: int) -> float:
    """The time from which the log holds its ``n`` newest predictions (0 when it holds fewer)."""
    with logdb.connect(path, readonly=True) as db:
        row = db.execute("SELECT ts FROM predictions ORDER BY id DESC LIMIT 1 OFFSET ?", (n - 1,)).fetchone()
    return float(row[0]) if row else 0.0


def lookup(path: Target, pid: str) -> dict[str, Any] | None:
    """One prediction by its id: ``ts``, ``model``, ``version``, ``label``, ``confidence``,
    ``endpoint`` and ``truth`` (-1 without feedback); None when the log does not hold it."""
    with logdb.connect(path, readonly=True) as db:
        row = db.execute(
            "SELECT p.ts, p.model, p.version, p.label, p.confidence, p.endpoint, COALESCE(f.label, -1) "
            "FROM predictions p LEFT JOIN feedback f ON f.pid = p.pid WHERE p.pid = ?",
            (pid,),
        ).fetchone()
    if row is None:
        return None
    keys = ("ts", "model", "version", "label", "confidence", "endpoint", "truth")
    return dict(zip(keys, row, strict=True))


def open_log(path: str | None, tracking_uri: str, otherwise: str = "") -> Target:
    """The prediction log a config names (``serve.prediction_log``), which must exist; the error
    ends with ``otherwise`` (what else the command could be given)."""
    from mnistops.errors import MnistopsError

    if not path:
        raise MnistopsError("serve.prediction_log is not set: there is no prediction log to read")
    log_path = resolve_log(path, tracking_uri)
    if not logdb.exists(log_path):
        raise MnistopsError(f"no prediction log at {log_path}: serve a model first (mnistops serve){otherwise}")
    return log_path if logdb.is_url(log_path) else Path(log_path).resolve()


def production_log(serve: Any, tracking_uri: str) -> Target | None:
    """The prediction log ``serve.prediction_log`` names, when it exists (the gate replays it)."""
    if not serve.prediction_log:
        return None
    path = resolve_log(serve.prediction_log, tracking_uri)
    if logdb.is_url(path):
        return path
    return Path(path).resolve() if logdb.exists(path) else None


def resolve_log(path: str, tracking_uri: str) -> Target:
    """The prediction log ``path`` names: a PostgreSQL URL as it is; a file as given when it exists
    there, else (a relative path) the same name beside a SQLite store, where ``mnistops serve``
    started in the project's root keeps it (a notebook's kernel runs in notebooks/)."""
    if logdb.is_url(path):
        return path
    given = Path(path)
    if given.exists() or given.is_absolute() or not tracking_uri.startswith("sqlite:///"):
        return given
    beside = Path(tracking_uri.removeprefix("sqlite:///")).parent / given
    return beside if beside.exists() else given


class UnknownPredictionError(LookupError):
    """Feedback names predictions that are not in the log (never made, or past retention)."""

    def __init__(self, ids: list[str]) -> None:
        super().__init__(", ".join(ids))
        self.ids = ids


class AlreadyLabeledError(LookupError):
    """Feedback for predictions that already have a label, without ``replace``."""

    def __init__(self, ids: list[str]) -> None:
        super().__init__(", ".join(ids))
        self.ids = ids


def add_feedback(path: Target, items: list[tuple[str, int, bool]]) -> list[tuple[int, int]]:
    """Store each ``(prediction id, true label, replace)``, all or none; return each prediction's
    ``(predicted, true)`` labels.

    Raises:
        UnknownPredictionError: an id is not in the log.
        AlreadyLabeledError: an id has a label already and its item does not say ``replace``.
    """
    ids = [pid for pid, _, _ in items]
    marks = ",".join("?" * len(ids))
    now = time.time()
    with logdb.connect(path, autocommit=False) as db:
        db.take_feedback()  # the check and the insert as one: two clients cannot both be first
        try:
            predicted = dict(db.execute(f"SELECT pid, label FROM predictions WHERE pid IN ({marks})", ids).fetchall())
            unknown = [pid for pid in ids if pid not in predicted]
            if unknown:
                raise UnknownPredictionError(unknown)
            labeled = {row[0] for row in db.execute(f"SELECT pid FROM feedback WHERE pid IN ({marks})", ids)}
            taken = [pid for pid, _, replace in items if pid in labeled and not replace]
            if taken:
                raise AlreadyLabeledError(taken)
            db.executemany(
                "INSERT INTO feedback (pid, label, ts) VALUES (?, ?, ?) "
                "ON CONFLICT (pid) DO UPDATE SET label = excluded.label, ts = excluded.ts",
                [(pid, label, now) for pid, label, _ in items],
            )
            db.commit()
        except BaseException:
            db.rollback()
            raise
    return [(int(predicted[pid]), label) for pid, label, _ in items]


def live_accuracy(path: Target, window: int = 1000) -> tuple[float | None, int]:
    """The share of the ``window`` most recently labeled predictions that the model got right,
    and how many that is (``None, 0`` before any label)."""
    with logdb.connect(path, readonly=True) as db:
        rows = db.execute(
            "SELECT CASE WHEN p.label = f.label THEN 1 ELSE 0 END FROM feedback f "
            "JOIN predictions p ON p.pid = f.pid ORDER BY f.ts DESC LIMIT ?",
            (window,),
        ).fetchall()
    if not rows:
        return None, 0
    return sum(r[0] for r in rows) / len(rows), len(rows)
