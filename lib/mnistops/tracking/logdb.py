"""The prediction log's database: a SQLite file (the default), or PostgreSQL (``postgresql://...``)
where several ``mnistops serve`` processes, on one machine or several, write one log.

:mod:`mnistops.tracking.predlog` writes its SQL once, with ``?`` placeholders; :func:`connect`
hands it a connection that speaks either database. What differs is here: the schema's types, how
a transaction takes the feedback table for itself, and the errors a write can meet.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mnistops.errors import ConfigError

Target = Path | str  # a SQLite file, or a PostgreSQL URL

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    image BLOB NOT NULL,
    label INTEGER NOT NULL,
    confidence REAL NOT NULL,
    endpoint TEXT NOT NULL,
    pid TEXT
);
CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts);
CREATE TABLE IF NOT EXISTS feedback (
    pid TEXT PRIMARY KEY,
    label INTEGER NOT NULL CHECK (label BETWEEN 0 AND 9),
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_ts ON feedback (ts);
"""
POSTGRES_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS predictions (id BIGSERIAL PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, "
    "model TEXT NOT NULL, version TEXT NOT NULL, image BYTEA NOT NULL, label INTEGER NOT NULL, "
    "confidence DOUBLE PRECISION NOT NULL, endpoint TEXT NOT NULL, pid TEXT)",
    "CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts)",
    "CREATE TABLE IF NOT EXISTS feedback (pid TEXT PRIMARY KEY, "
    "label INTEGER NOT NULL CHECK (label BETWEEN 0 AND 9), ts DOUBLE PRECISION NOT NULL)",
    "CREATE INDEX IF NOT EXISTS feedback_ts ON feedback (ts)",
)
PID_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS predictions_pid ON predictions (pid)"
SCHEMA_LOCK = 7_283_001  # PostgreSQL advisory lock: servers starting together create the tables once


def is_url(target: Target) -> bool:
    """Whether ``target`` names a PostgreSQL database rather than a SQLite file."""
    return str(target).startswith(("postgresql://", "postgres://", "postgresql+psycopg://"))


def describe(target: Target) -> str:
    """``target`` for messages, without a password."""
    if not is_url(target):
        return str(target)
    from sqlalchemy.engine import make_url

    return make_url(str(target)).render_as_string(hide_password=True)


def errors() -> tuple[type[BaseException], ...]:
    """What a failed read or write of either database raises."""
    try:
        import psycopg
    except ImportError:
        return (sqlite3.Error,)
    return (sqlite3.Error, psycopg.Error)


class Db:
    """A connection to either database, with ``?`` placeholders and tuples for rows."""

    def __init__(self, conn: Any, postgres: bool) -> None:
        self.conn, self.postgres = conn, postgres

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement; the cursor (``fetchone``, ``fetchall``, iteration)."""
        return self.conn.execute(self._sql(sql), tuple(params))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement for each of ``rows``."""
        if self.postgres:
            with self.conn.cursor() as cur:
                cur.executemany(self._sql(sql), rows)
        else:
            self.conn.executemany(sql, rows)

    def begin(self) -> None:
        """Begin a transaction (PostgreSQL's connections for writing are always in one)."""
        if not self.postgres:
            self.conn.execute("BEGIN")

    def take_feedback(self) -> None:
        """Begin a transaction in which no other writer changes the feedback table."""
        if self.postgres:
            self.conn.execute("LOCK TABLE feedback IN SHARE ROW EXCLUSIVE MODE")
        else:
            self.conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        """End the transaction, keeping what it did."""
        self.conn.commit() if self.postgres else self.conn.execute("COMMIT")

    def rollback(self) -> None:
        """End the transaction, undoing what it did."""
        self.conn.rollback() if self.postgres else self.conn.execute("ROLLBACK")


@contextlib.contextmanager
def connect(target: Target, timeout: float = 10.0, readonly: bool = False, autocommit: bool = True) -> Iterator[Db]:
    """A connection to the log's database, closed on leaving. ``autocommit=False`` leaves the
    transaction to the caller (:meth:`Db.take_feedback`, :meth:`Db.commit`)."""
    if is_url(target):
        conn = _postgres(str(target), timeout)
        conn.autocommit = autocommit
        if readonly:
            conn.read_only = True
        try:
            yield Db(conn, postgres=True)
        finally:
            conn.close()
        return
    if readonly:
        lite = sqlite3.connect(f"file:{target}?mode=ro", uri=True, timeout=timeout)
    else:
        lite = sqlite3.connect(target, timeout=timeout, isolation_level=None)
    try:
        yield Db(lite, postgres=False)
    finally:
        lite.close()


def _postgres(url: str, timeout: float) -> Any:
    try:
        import psycopg
    except ImportError:
        raise ConfigError(
            "a PostgreSQL prediction log needs psycopg, which is not installed: pip install -e '.[postgres]'"
        ) from None
    dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)
    return psycopg.connect(dsn, connect_timeout=max(1, int(timeout)))


def create(target: Target) -> None:
    """Create the log's tables where they are missing (and bring an older SQLite log up to date)."""
    if is_url(target):
        with connect(target, autocommit=False) as db:
            db.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))
            for statement in (*POSTGRES_SCHEMA, PID_INDEX):
                db.execute(statement)
            db.commit()
        return
    with contextlib.closing(sqlite3.connect(target)) as lite, lite:
        lite.executescript(SQLITE_SCHEMA)
        columns = {row[1] for row in lite.execute("PRAGMA table_info(predictions)")}
        if "pid" not in columns:  # a log from before predictions had ids
            lite.execute("ALTER TABLE predictions ADD COLUMN pid TEXT")
        lite.execute(PID_INDEX)
        lite.execute("PRAGMA journal_mode=WAL")


def has_feedback(db: Db) -> bool:
    """Whether the log has a feedback table (a SQLite log from before feedback has none)."""
    if db.postgres:
        return bool(db.execute("SELECT to_regclass('feedback') IS NOT NULL").fetchone()[0])
    return db.execute("SELECT 1 FROM sqlite_master WHERE name = 'feedback'").fetchone() is not None


def exists(target: Target) -> bool:
    """Whether the log is there to read: a SQLite file that exists, or any PostgreSQL URL."""
    return is_url(target) or Path(target).is_file()
