"""The CNN in the same lifecycle: tracked, promoted over a forest, reproduced."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnistops.data.dataset import Dataset
from support import run_cli

pytest.importorskip("torch")
pytestmark = pytest.mark.cnn

FAST = ["--config", str(Path(__file__).resolve().parents[2] / "configs" / "cnn_fast.yaml")]


def train(*args: str) -> dict[str, Any]:
    proc = run_cli("train", "--json", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_cnn_run_beats_a_forest_champion_and_is_promoted(store: Path, small_mnist: Path) -> None:
    """On the 10,000-image subset: the forest scores 0.93 there, the CNN after one epoch 0.95."""
    forest = train("--set", "model.params.n_estimators=25", "--set", "model.params.max_depth=14", "--promote")
    assert forest["promotion"]["promoted"]
    cnn = train(*FAST, "--set", "model.params.epochs=1", "--promote")
    assert cnn["metrics"]["accuracy"] > forest["metrics"]["accuracy"]
    decision = cnn["promotion"]
    assert decision["promoted"] and decision["champion_version"] == forest["model_version"], decision

    from mlflow.tracking import MlflowClient

    model = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_registered_model("mnist-classifier")
    assert str(model.aliases["champion"]) == cnn["model_version"]
    assert str(model.aliases["previous"]) == forest["model_version"]
    history = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_metric_history(cnn["run_id"], "val_accuracy")
    assert [m.step for m in history] == [1] and 0.9 < history[0].value <= 1.0
    tags = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(cnn["run_id"]).data.tags
    import torch

    assert tags["mnistops.device"] == ("cuda" if torch.cuda.is_available() else "cpu")  # device: auto
    assert tags["mnistops.torch"] == torch.__version__


def test_device_cuda_without_a_gpu_is_one_line_naming_the_fix(store: Path, small_mnist: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    from support import one_line_error

    proc = run_cli("train", *FAST, "--set", "model.params.device=cuda")
    line = one_line_error(proc)
    assert proc.returncode == 2
    assert "model.params.device is cuda, but torch sees no CUDA GPU here" in line and "use device: auto or cpu" in line
    assert not (store / "mlruns").exists() or not any((store / "mlruns").rglob("meta.yaml"))  # no run started


def test_cnn_run_reproduces_identically(store: Path, mnist: Dataset) -> None:
    rows = np.arange(0, 70_000, 20)
    path = store / "digits.npz"
    np.savez(path, **Dataset("d", mnist.images[rows], mnist.labels[rows], mnist.is_train[rows]).official_arrays())
    original = train(
        "--set",
        "model.name=cnn",
        "--set",
        f"data.dataset={path}",
        "--set",
        "model.params.epochs=2",
        "--set",
        "model.params.channels=[8,16]",
        "--set",
        "model.params.threads=2",
    )
    proc = run_cli("reproduce", original["run_id"], "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["verdict"] == "identical", result
    assert result["prediction_mismatches"] == 0 and result["max_proba_diff"] == 0.0
