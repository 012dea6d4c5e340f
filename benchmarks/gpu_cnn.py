"""The CNN on a CUDA GPU: candidate recipes, time to 0.994 on the test split, best accuracy, epoch time.

Runs where only numpy and torch are installed (the lent GPU machine has no MLflow): it imports
mnistops' CNN module (``lib/mnistops/train/cnn.py``) and nothing else of mnistops, and reads MNIST
from an ``.npz`` made beforehand by ``python benchmarks/gpu_cnn.py --prepare FILE`` on a machine
with mnistops (the stratified 80/20 split with seed 42 that ``mnistops train`` uses). For each
recipe: train on the GPU (data resident there, augmentation there), score the test split after
every epoch (outside the timed training), and report one JSON line. A final line checks
determinism: one epoch twice, same weights?

``configs/cnn_gpu.yaml`` is the recipe :data:`CHOSEN` names (a test checks the two agree).

Usage:
    python benchmarks/gpu_cnn.py --prepare benchmarks/out/mnist_split.npz      # with mnistops
    python benchmarks/gpu_cnn.py --data benchmarks/out/mnist_split.npz [--only NAME ...]   # on the GPU
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.994
BASE = {
    "channels": [24, 48],
    "convs_per_block": 1,
    "hidden": 128,
    "dropout": 0.1,
    "epochs": 12,
    "batch_size": 128,
    "lr": 0.005,
    "weight_decay": 1e-4,
    "label_smoothing": 0.1,
    "schedule": "onecycle",
    "augment_shift": 2,
    "val_fraction": 0.05,
    "patience": 100,
    "threads": 0,
    "device": "cuda",
    "amp": "off",
}
RECIPES: dict[str, dict[str, Any]] = {
    # configs/cnn.yaml, the CPU's full recipe, as it is
    "cpu_full": {},
    "wide_20": {
        "channels": [32, 64],
        "convs_per_block": 2,
        "hidden": 256,
        "dropout": 0.25,
        "epochs": 20,
        "batch_size": 256,
        "lr": 0.006,
    },
    "wide_30_bf16": {
        "channels": [48, 96],
        "convs_per_block": 2,
        "hidden": 256,
        "dropout": 0.3,
        "epochs": 30,
        "batch_size": 256,
        "lr": 0.006,
        "amp": "bf16",
    },
    "wider_40_bf16": {
        "channels": [64, 128],
        "convs_per_block": 2,
        "hidden": 512,
        "dropout": 0.35,
        "epochs": 40,
        "batch_size": 256,
        "lr": 0.005,
        "augment_shift": 3,
        "amp": "bf16",
    },
}
CHOSEN = "wide_20"  # measured on an H100: see README, The CNN


def recipe(name: str) -> dict[str, Any]:
    return {**BASE, **RECIPES[name]}


def prepare(out: Path) -> None:
    sys.path.insert(0, str(ROOT / "lib"))
    from mnistops.data import sources
    from mnistops.data.split import make_split

    ds = sources.load("mnist")
    split = make_split(ds, "stratified", 0.2, 42)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        x_train=ds.images[split.train],
        y_train=ds.labels[split.train],
        x_test=ds.images[split.test],
        y_test=ds.labels[split.test],
    )
    print(json.dumps({"prepared": str(out), "bytes": out.stat().st_size, "split": split.fingerprint}))


def load_cnn_module() -> Any:
    """``mnistops.train.cnn`` with only numpy and torch: the package's ``__init__`` files are
    light, and ``pyfunc_model`` (which imports MLflow and pandas to build the network the saved
    model uses) gets placeholders for those two where they are not installed."""
    sys.path.insert(0, str(ROOT / "lib"))
    absent = {top for top in ("mlflow", "pandas") if importlib.util.find_spec(top) is None}
    for missing in ("mlflow", "mlflow.models", "mlflow.pyfunc", "pandas"):
        if missing.split(".")[0] in absent:
            module = types.ModuleType(missing)
            module.set_model = lambda model: None  # type: ignore[attr-defined]
            module.PythonModel = object  # type: ignore[attr-defined]
            module.models = module  # type: ignore[attr-defined]
            module.pyfunc = module  # type: ignore[attr-defined]
            sys.modules[missing] = module
    from mnistops.train import cnn

    return cnn


def train(cnn: Any, name: str, data: dict[str, np.ndarray], seed: int = 42) -> dict[str, Any]:
    import torch

    params = recipe(name)
    x = data["x_train"].reshape(-1, 784).astype(np.float32) / 255
    xt = data["x_test"].reshape(-1, 784).astype(np.float32) / 255
    model = cnn.TorchCNN(params, seed=seed)
    curve: list[dict[str, float]] = []
    scoring = [0.0]

    def on_epoch(epoch: int, stats: dict[str, float]) -> None:
        t0 = time.perf_counter()
        acc = float((model.predict_proba(xt).argmax(1) == data["y_test"]).mean())
        scoring[0] += time.perf_counter() - t0
        curve.append(
            {
                "epoch": epoch,
                "test_accuracy": round(acc, 5),
                "epoch_s": round(stats["epoch_time_s"], 3),
                "train_s": round(time.perf_counter() - started - scoring[0], 2),
            }
        )

    torch.cuda.synchronize()
    started = time.perf_counter()
    model.fit(x, data["y_train"], on_epoch=on_epoch)
    torch.cuda.synchronize()
    wall = time.perf_counter() - started - scoring[0]
    final = float((model.predict_proba(xt).argmax(1) == data["y_test"]).mean())
    reached = next((c["train_s"] for c in curve if c["test_accuracy"] >= TARGET), None)
    return {
        "recipe": name,
        "params": params,
        "device": model.tags,
        "train_s": round(wall, 2),
        "epoch_s_median": float(np.median([c["epoch_s"] for c in curve])),
        "best_accuracy": max(c["test_accuracy"] for c in curve),
        "final_accuracy": round(final, 5),
        "seconds_to_0.994": reached,
        "curve": curve,
    }


def determinism(cnn: Any, data: dict[str, np.ndarray]) -> dict[str, Any]:
    import torch

    x = data["x_train"][:8192].reshape(-1, 784).astype(np.float32) / 255
    weights = []
    for _ in range(2):
        model = cnn.TorchCNN({**recipe(CHOSEN), "epochs": 1}, seed=7)
        model.fit(x, data["y_train"][:8192])
        weights.append(model.state_dict())
    same = all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    on_cpu = all(v.device.type == "cpu" for v in weights[0].values())
    return {"determinism": {"recipe": CHOSEN, "same_weights_twice": same, "saved_weights_on_cpu": on_cpu}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prepare", type=Path, help="write the split .npz here (needs mnistops) and exit")
    parser.add_argument("--data", type=Path, default=ROOT / "benchmarks" / "out" / "mnist_split.npz")
    parser.add_argument("--only", nargs="*", default=list(RECIPES), help="recipes to run")
    args = parser.parse_args()
    if args.prepare:
        prepare(args.prepare)
        return
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: this benchmark runs on a GPU machine (see README, The CNN)")
    cnn = load_cnn_module()
    with np.load(args.data) as z:
        data = {k: z[k] for k in z.files}
    print(
        json.dumps(
            {
                "gpu": torch.cuda.get_device_name(0),
                "torch": torch.__version__,
                "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version(),
            }
        ),
        flush=True,
    )
    for name in args.only:
        try:
            print(json.dumps(train(cnn, name, data)), flush=True)
        except Exception as exc:  # one recipe's failure must not cost the others' numbers
            print(json.dumps({"recipe": name, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
    print(json.dumps(determinism(cnn, data)), flush=True)


if __name__ == "__main__":
    main()
