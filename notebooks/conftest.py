"""nbval's set-up for ``make nbval`` (``pytest --nbval-lax notebooks/``).

The notebooks' MLflow runs go into a throwaway store, never into the repository: the kernels
nbval starts inherit ``MLFLOW_TRACKING_URI`` from here. Each notebook runs top to bottom with
its own defaults; cells marked ``# NBVAL_CHECK_OUTPUT`` must print what is committed.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

_STORE: dict[str, str] = {}


def pytest_configure(config: pytest.Config) -> None:
    folder = tempfile.mkdtemp(prefix="mnistops-nbval-")
    _STORE["folder"] = folder
    _STORE["old"] = os.environ.get("MLFLOW_TRACKING_URI", "")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _STORE.get("old"):
        os.environ["MLFLOW_TRACKING_URI"] = _STORE["old"]
    else:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    shutil.rmtree(_STORE.get("folder", ""), ignore_errors=True)
