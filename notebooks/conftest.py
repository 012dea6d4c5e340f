"""nbval's set-up for ``make nbval`` (``pytest --nbval-lax notebooks/``), and for the notebooks'
share of ``make test``, where they run in one xdist worker beside the test suite.

The notebooks' MLflow runs go into a throwaway store, never into the repository: each kernel
nbval starts gets ``MLFLOW_TRACKING_URI`` from here (set while the kernel starts, so the tests
that share the process never see it). Each notebook runs top to bottom with its own defaults;
cells marked ``# NBVAL_CHECK_OUTPUT`` must print what is committed. The notebooks run in order
in one worker (the ``nbval`` group): ``04_evaluate`` reads the run ``03_train`` made.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_STORE: dict[str, str] = {}


def _is_notebook_cell(item: pytest.Item) -> bool:
    return Path(str(item.fspath)).suffix == ".ipynb"


def pytest_itemcollected(item: pytest.Item) -> None:
    """Every cell of every notebook in one xdist group, so that one worker runs them in order."""
    if _is_notebook_cell(item):
        item.add_marker(pytest.mark.xdist_group("nbval"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    """The store exists from the first cell on; a notebook's kernel starts with it in its environment."""
    if not _is_notebook_cell(item):
        yield
        return
    if "folder" not in _STORE:
        _STORE["folder"] = tempfile.mkdtemp(prefix="mnistops-nbval-")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_STORE['folder']}/mlflow.db"
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """After the last cell (its kernel stopped), the store goes."""
    if _is_notebook_cell(item) and (nextitem is None or not _is_notebook_cell(nextitem)) and "folder" in _STORE:
        shutil.rmtree(_STORE.pop("folder"), ignore_errors=True)
