"""Helpers the tests import (``from support import ...``): the real CLI in a fresh process, its
one-line errors, a store read back, folders shared by the xdist workers.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CLOSED_MIRROR = "http://127.0.0.1:9/"
ROOT = Path(__file__).resolve().parents[1]
PYTHON_BIN = Path(sys.executable).parent


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


def read_store(uri: str, script: str, fresh: bool = False) -> object:
    """Run ``script`` (which must print JSON) against the store at ``uri``; what it printed last.

    By default the script runs in this process, with ``MLFLOW_TRACKING_URI`` and MLflow's tracking
    URI pointed at ``uri`` for its duration: MLflow's client reads a SQLite store or a server afresh
    on every call (nothing is cached between calls), so this reads what the commands under test
    wrote, as a fresh process would, without its two CPU-seconds of ``import mlflow``.
    ``fresh=True`` runs it in a fresh Python process: for scripts that must not see this process's
    modules (stock MLflow without mnistops) or that must be another process (a second writer).
    """
    import io
    import json

    if fresh:
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
    import mlflow

    before_env = os.environ.get("MLFLOW_TRACKING_URI")
    before_uri = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    printed = io.StringIO()
    mlflow.set_tracking_uri(uri)  # sets MLFLOW_TRACKING_URI too
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(script, "<read_store>", "exec"), {"__name__": "read_store"})
    finally:
        mlflow.set_tracking_uri(before_uri)  # None: unset, as it was
        if before_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before_env
    return json.loads(printed.getvalue().strip().splitlines()[-1])


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


# Every run of a store with its status, tags, params, metrics and artifact paths.
RUNS = """
import json
from mlflow.tracking import MlflowClient
c = MlflowClient()
out = []
for e in c.search_experiments():
    for r in c.search_runs([e.experiment_id]):
        arts, todo = [], [None]
        while todo:
            for f in c.list_artifacts(r.info.run_id, todo.pop()):
                (todo if f.is_dir else arts).append(f.path)
        out.append({"id": r.info.run_id, "status": r.info.status, "tags": r.data.tags, "params": r.data.params,
                    "metrics": r.data.metrics, "artifacts": sorted(arts)})
print(json.dumps(out))
"""


def env_for(work: Path, session_cache: Path) -> dict[str, str]:
    """The environment of a notebook batch or CLI run whose store is ``work/mlflow.db``."""
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        "MNISTOPS_CACHE_DIR": str(session_cache),
        "MNISTOPS_MIRRORS": CLOSED_MIRROR,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PATH": f"{PYTHON_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def run_batch(work: Path, session_cache: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """``python run_notebooks.py --out work/outputs ARGS`` in ``work``, on the store there."""
    return subprocess.run(
        [sys.executable, str(ROOT / "run_notebooks.py"), "--out", str(work / "outputs"), *args],
        cwd=work,
        env=env_for(work, session_cache),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def runs_in(work: Path) -> list[dict[str, Any]]:
    """Every run of ``work/mlflow.db``, read back in a fresh process (see :data:`RUNS`)."""
    return read_store(f"sqlite:///{work / 'mlflow.db'}", RUNS)  # type: ignore[return-value]


@dataclass(frozen=True)
class SeedStore:
    """The seed notebook's settings on real MNIST, trained by both front doors into one store."""

    work: Path  # the folder of mlflow.db, mlruns/ and outputs/
    batch: dict[str, Any]  # what `python run_notebooks.py --config configs/seed.yaml --json` printed
    batch_runs: list[dict[str, Any]]  # the store's runs (runs_in) right after the batch
    train: dict[str, Any]  # what `mnistops train --config configs/seed.yaml --force --json` printed then
    batch_seconds: float  # the batch's wall time, the command's start to its end


# A script that holds a SQLite database's write lock (BEGIN IMMEDIATE) for argv[2] seconds, saying when it has it.
LOCKER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


@contextlib.contextmanager
def tiny_disk(folder: Path, size: str = "1m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``folder`` (root only), unmounted afterwards."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=False)
    if mounted.returncode != 0:
        pytest.skip("needs root to mount a tmpfs (CI runs as root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` to the last byte; the filler's path."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as f:
        for block in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * block)
    return filler


def metric(text: str, series_name: str, **labels: str) -> float:
    """The sum of one Prometheus series over the samples whose labels include ``labels``."""
    want = {f'{k}="{v}"' for k, v in labels.items()}
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        key, value = line.rsplit(" ", 1)
        series, _, rest = key.partition("{")
        if series == series_name and want <= set(rest.rstrip("}").split(",")):
            total += float(value)
    return total


@contextlib.contextmanager
def offline_chromium(url: str) -> Iterator[tuple[Any, list[str], list[str]]]:
    """Debian's Chromium, headless and offline, at ``url``: the page, every request it made and
    its errors (console errors and uncaught exceptions; skipped where Chromium is not installed:
    .ci/run installs it)."""
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("needs Debian's chromium (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--host-resolver-rules=MAP * ~NOTFOUND",
                "--proxy-server=127.0.0.1:9",
            ],
        )
        try:
            page = browser.new_context(offline=True).new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url, wait_until="load")
            yield page, requests, errors
        finally:
            browser.close()
