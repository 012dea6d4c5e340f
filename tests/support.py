"""Helpers the tests import (``from support import ...``): the real CLI in a fresh process, its
one-line errors, a store read back in a fresh process, folders shared by the xdist workers.

They live here, not in ``conftest.py``: ``notebooks/conftest.py`` is a module named ``conftest``
too, and a session that collects both (``make test``) can import only one of them by that name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

CLOSED_MIRROR = "http://127.0.0.1:9/"


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the real ``mnistops`` CLI in a fresh process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "mnistops", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def peek_store(db: Path, query: str) -> tuple[object, ...] | None:
    """The first row of ``query`` over the SQLite store ``db``, read-only; None when there is no
    row, no file yet, no schema yet or the writer holds a lock. For polling a store that another
    process is still creating: an MLflow client would run the migrations there too (both then
    create the same tables, and one fails)."""
    if not db.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as conn:
            row: tuple[object, ...] | None = conn.execute(query).fetchone()
            return row
    except sqlite3.Error:
        return None


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """Assert the CLI failed with one ``error:`` line on stderr and no traceback; return it.

    Warnings logged before the error (a cache file discarded, say) may precede it.
    """
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    assert proc.stderr.rstrip().endswith(lines[0]), proc.stderr
    return lines[0]


def read_store(uri: str, script: str) -> object:
    """Run ``script`` (which must print JSON) in a fresh Python process against ``uri``."""
    import json

    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def shared_folder(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder that ``build`` fills once per test session, whichever xdist worker asks first;
    the others wait for it (a file lock) and use the same folder. Treat it as read-only."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the controller's basetemp: every worker's basetemp is inside it
    folder = base / f"shared-{name}"
    with FileLock(f"{folder}.lock"):
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder
