"""The CNN on small real MNIST: learns, is deterministic, and loads anywhere with stock MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnistops.data.dataset import Dataset, to_features
from mnistops.train.models import build_model

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.cnn

TINY = {
    "channels": [8, 16],
    "hidden": 32,
    "epochs": 2,
    "batch_size": 64,
    "lr": 0.01,
    "augment_shift": 1,
    "val_fraction": 0.1,
    "threads": 2,
}


@pytest.fixture(scope="module")
def small(mnist: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rows = np.random.default_rng(1).permutation(mnist.n_samples)[:3000]
    return (
        mnist.features(rows[:2400]),
        mnist.labels[rows[:2400]],
        mnist.features(rows[2400:]),
        mnist.labels[rows[2400:]],
    )


@pytest.mark.slow
def test_cnn_trains_and_improves(small: tuple[np.ndarray, ...]) -> None:
    x, y, xt, yt = small
    model = build_model("cnn", {**TINY, "epochs": 3}, seed=0)
    model.fit(x, y)
    history = model.history  # type: ignore[attr-defined]
    assert len(history) == 3
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert max(h["val_accuracy"] for h in history) > 0.85
    assert (model.predict_proba(xt).argmax(1) == yt).mean() > 0.85


@pytest.mark.slow
def test_same_seed_gives_identical_weights(small: tuple[np.ndarray, ...]) -> None:
    x, y, _, _ = small
    weights = []
    for seed in (5, 5, 6):
        m = build_model("cnn", TINY, seed=seed)
        m.fit(x, y)
        weights.append({k: v.clone() for k, v in m.state_dict().items()})  # type: ignore[attr-defined]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


def test_images_and_floats_give_the_same_answers(small: tuple[np.ndarray, ...], mnist: Dataset, tmp_path: Path) -> None:
    x, y, _, _ = small
    m = build_model("cnn", {**TINY, "epochs": 1}, seed=0)
    m.fit(x, y)
    images = mnist.images[:64]
    np.testing.assert_array_equal(m.predict_proba(to_features(images)), m.predict_proba(mnist.features(np.arange(64))))
    from mnistops.train.pyfunc_model import MnistClassifier

    directory = tmp_path / "cnn"
    m.save(directory)
    wrapper = MnistClassifier()
    from types import SimpleNamespace

    wrapper.load_context(SimpleNamespace(artifacts={"model_dir": str(directory)}))
    assert wrapper.predict(None, images).equals(wrapper.predict(None, images.reshape(64, 784).astype(np.float32) / 255))


PREDICT = """
import sys, json
sys.modules["mnistops"] = None  # stock MLflow and torch only
import numpy as np, torch, mlflow.pyfunc
torch.set_num_threads(2)
out = mlflow.pyfunc.load_model({uri!r}).predict(np.load({x!r}))
np.save({out!r}, out.filter(like="prob_").to_numpy())
print(json.dumps({{"labels": out["label"].tolist()}}))
"""


@pytest.mark.slow
def test_pyfunc_in_a_fresh_process_answers_exactly_as_in_process(
    small: tuple[np.ndarray, ...], store: Path, tmp_path: Path
) -> None:
    import mlflow

    from mnistops.pipeline import pip_requirements
    from mnistops.train import mlflow_model

    x, y, xt, _ = small
    m = build_model("cnn", {**TINY, "epochs": 1}, seed=0)
    m.fit(x, y)
    m.save(tmp_path / "model")
    mlflow.set_experiment("cnn-test")
    with mlflow.start_run():
        info = mlflow_model.log_model(tmp_path / "model", xt[:5], pip_requirements("torch"))
    np.save(tmp_path / "x.npy", xt)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            PREDICT.format(uri=info.model_uri, x=str(tmp_path / "x.npy"), out=str(tmp_path / "p.npy")),
        ],
        capture_output=True,
        text=True,
        check=False,
        env=os.environ.copy(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    here = m.predict_proba(xt)
    there: Any = np.load(tmp_path / "p.npy")
    np.testing.assert_array_equal(there, here)
    assert json.loads(proc.stdout)["labels"] == here.argmax(1).tolist()


@pytest.mark.slow
def test_without_torch_the_error_names_the_extra(store: Path) -> None:
    # torch as if not installed: its import fails as a missing package's does. (None in sys.modules
    # would not do: scipy takes a 'torch' key there for the package itself and looks inside it.)
    code = (
        "import sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torch':\n"
        '            raise ModuleNotFoundError(f"No module named {name!r}", name=name)\n'
        "sys.meta_path.insert(0, NoTorch())\n"
        "sys.argv = ['mnistops', 'train', '--set', 'model.name=cnn']\n"
        "from mnistops.cli import main; main()"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "model cnn needs PyTorch, which is not installed: pip install -e '.[cnn]'" in proc.stderr


def test_auto_picks_the_cpu_here_and_bf16_falls_back_to_float32_on_it(small: tuple[np.ndarray, ...]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    model = build_model("cnn", {**TINY, "epochs": 1, "amp": "bf16"}, seed=0)
    assert model.device.type == "cpu" and model.amp is False  # type: ignore[attr-defined]
    assert model.tags["mnistops.device"] == "cpu"  # type: ignore[attr-defined]
    x, y, _, _ = small
    model.fit(x[:500], y[:500])
    assert all(v.device.type == "cpu" for v in model.state_dict().values())  # type: ignore[attr-defined]
    from mnistops.errors import ConfigError

    with pytest.raises(ConfigError, match=r"torch sees no CUDA GPU here .*: use device: auto or cpu"):
        build_model("cnn", {**TINY, "device": "cuda"}, seed=0)


def test_the_gpu_recipe_is_the_one_the_gpu_benchmark_chose() -> None:
    import yaml

    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "benchmarks"))
    try:
        import gpu_cnn
    finally:
        sys.path.remove(str(root / "benchmarks"))
    config = yaml.safe_load((root / "configs" / "cnn_gpu.yaml").read_text())["model"]["params"]
    measured = gpu_cnn.recipe(gpu_cnn.CHOSEN)
    assert {**config, "device": "cuda"} == measured
    from mnistops.train import cnn, models

    assert cnn.MODEL_FORMAT == models.MODEL_FORMAT
