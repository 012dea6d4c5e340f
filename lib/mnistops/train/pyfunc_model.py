"""The MLflow pyfunc model for every mnistops model (an MLflow "model from code" file).

MLflow stores this file beside the model, so a model loads with stock
``mlflow.pyfunc.load_model(uri)`` in a fresh process that has never heard of mnistops: it
imports only numpy, pandas, joblib (scikit-learn models) or torch (the CNN). Keep it that way.

Input: images as ``(n, 28, 28)`` or ``(n, 784)``, either integer pixels 0..255 (``uint8`` as
MNIST stores them, or any integer type) or float pixels in [0, 1] (``float32`` or ``float64``);
also a DataFrame of 784 columns where no schema is enforced. Anything else is refused with a
``ValueError`` that says what was expected. Output: a DataFrame with ``label`` (int) and
``prob_0`` .. ``prob_9``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


def to_features(model_input: Any) -> np.ndarray:
    """``float32 (n, 784)`` in [0, 1] from integer pixels 0..255 or float pixels in [0, 1].

    Raises:
        ValueError: a shape other than (n, 28, 28) or (n, 784), values out of range or not finite,
            or data that is not numbers.
    """
    arr = model_input.to_numpy() if isinstance(model_input, pd.DataFrame) else np.asarray(model_input)
    if arr.dtype == object:  # JSON lists reach a model as objects: let numpy find the number type
        try:
            arr = np.asarray(arr.tolist())
        except ValueError:
            raise ValueError("images must be rows of numbers of equal length (28x28 or 784 pixels)") from None
    if arr.ndim not in (2, 3) or arr.shape[0] == 0 or int(np.prod(arr.shape[1:])) != 784:
        raise ValueError(f"expected images of shape (n, 28, 28) or (n, 784), got {arr.shape}: one row per image")
    flat = arr.reshape(arr.shape[0], 784)
    if arr.dtype.kind in "iu" or arr.dtype == np.bool_:
        ilo, ihi = int(flat.min()), int(flat.max())
        if ilo < 0 or ihi > 255:
            raise ValueError(f"integer pixels must be 0..255, got {ilo}..{ihi}")
        out = flat.astype(np.float32)
        out /= np.float32(255.0)
        return out
    if arr.dtype.kind != "f":
        raise ValueError(f"pixels must be numbers, got dtype {arr.dtype}: pass uint8 0..255 or floats in [0, 1]")
    if not np.isfinite(flat).all():
        raise ValueError("pixels must be finite numbers: the input holds NaN or infinity")
    lo, hi = float(flat.min()), float(flat.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"float pixels must be in [0, 1], got {lo:g}..{hi:g}: divide 0..255 values by 255, or pass them as uint8"
        )
    return flat.astype(np.float32, copy=False)


def build_cnn(channels: tuple[int, int], hidden: int, dropout: float, convs_per_block: int = 1) -> Any:
    """The CNN: two blocks of ``convs_per_block`` 3x3 conv + batch norm + ReLU, each ending in a
    2x2 max pool (28 -> 14 -> 7), then a hidden fully connected layer and the 10 outputs."""
    from torch import nn

    layers: list[Any] = [nn.Unflatten(1, (1, 28, 28))]
    c_in = 1
    for c_out in channels:
        for _ in range(convs_per_block):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in = c_out
        layers.append(nn.MaxPool2d(2))
    layers += [
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(c_in * 7 * 7, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, 10),
    ]
    return nn.Sequential(*layers)


class MnistClassifier(PythonModel):
    """Loads ``meta.json`` and the model file it names; predicts labels and probabilities."""

    # The signature is given explicitly when logging; MLflow's type-hint validation of
    # predict() (and its warning that there are no hints) is not wanted here.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        """Load the fitted model from the logged artifacts."""
        directory = context.artifacts["model_dir"]
        with open(os.path.join(directory, "meta.json")) as f:
            self.meta = json.load(f)
        path = os.path.join(directory, self.meta["file"])
        if self.meta["kind"] == "sklearn":
            import joblib

            self.model = joblib.load(path)
            if self.meta.get("trees"):  # a forest saved as batches of trees, in order
                forest = self.model.steps[-1][1] if hasattr(self.model, "steps") else self.model
                forest.estimators_ = [
                    tree for name in self.meta["trees"] for tree in joblib.load(os.path.join(directory, name))
                ]
        elif self.meta["kind"] == "torch":
            import torch

            p = self.meta["params"]
            self.model = build_cnn(tuple(p["channels"]), p["hidden"], p["dropout"], p["convs_per_block"])
            self.model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            self.model.eval()
        else:
            raise ValueError(f"unknown model kind {self.meta['kind']!r}")

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Probabilities ``(n, 10)`` for ``float32 (n, 784)`` features."""
        if self.meta["kind"] == "sklearn":
            return np.asarray(self.model.predict_proba(x))
        import torch

        with torch.inference_mode():
            out = [
                torch.softmax(self.model(torch.from_numpy(np.ascontiguousarray(x[i : i + 512]))), 1).numpy()
                for i in range(0, len(x), 512)
            ]
        return np.concatenate(out) if out else np.zeros((0, 10), np.float32)

    # No type hints on purpose: MLflow would read predict()'s hints as a schema.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        """Predict labels and class probabilities for a batch of images."""
        proba = self.predict_proba(to_features(model_input))
        frame = pd.DataFrame(proba, columns=[f"prob_{i}" for i in range(proba.shape[1])])
        frame.insert(0, "label", proba.argmax(axis=1).astype(np.int64))
        return frame


# MLflow executes this file under a generated module name to load a model; mnistops itself
# imports it as a package module (for build_cnn and to_features) and must not set a model.
if __name__ != "mnistops.train.pyfunc_model":
    set_model(MnistClassifier())
