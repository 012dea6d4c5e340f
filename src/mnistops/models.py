"""Models behind one small interface, chosen by name.

Each model name has a parameter model (:data:`PARAMS`, pydantic, ``extra="forbid"``) and a
builder. Every model is a :class:`Model`: ``fit`` on ``float32 (n, 784)`` features,
``predict_proba`` to ``(n, 10)``, ``save`` into a folder that :mod:`mnistops.pyfunc_model`
loads with nothing but stock MLflow. The seed from the config is passed as ``random_state``.

Forests are fitted in batches of trees (``warm_start``), which draws the same per-tree seeds
as a single ``fit`` and so builds the same forest, while giving progress and a point between
batches where Ctrl-C or SIGTERM is handled.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mnistops.errors import ConfigError, MissingExtraError
from mnistops.progress import NullReporter, Reporter

log = logging.getLogger(__name__)

MODEL_FORMAT = "mnistops-model/1"


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RandomForestParams(_Params):
    """scikit-learn ``RandomForestClassifier`` parameters (defaults: the notebook's script)."""

    n_estimators: int = Field(150, ge=1, le=5000)
    max_depth: int | None = Field(25, ge=1)
    min_samples_split: int = Field(2, ge=2)
    min_samples_leaf: int = Field(1, ge=1)
    max_features: Literal["sqrt", "log2"] | float | None = "sqrt"
    criterion: Literal["gini", "entropy", "log_loss"] = "gini"
    bootstrap: bool = True
    n_jobs: int = -1


class ExtraTreesParams(RandomForestParams):
    """scikit-learn ``ExtraTreesClassifier`` parameters."""

    max_depth: int | None = Field(None, ge=1)
    bootstrap: bool = False


class HistGradientBoostingParams(_Params):
    """scikit-learn ``HistGradientBoostingClassifier`` parameters (no early stopping: deterministic)."""

    max_iter: int = Field(100, ge=1)
    learning_rate: float = Field(0.1, gt=0)
    max_leaf_nodes: int = Field(31, ge=2)
    max_depth: int | None = Field(None, ge=1)
    l2_regularization: float = Field(0.0, ge=0)
    max_bins: int = Field(255, ge=2, le=255)


class LogisticRegressionParams(_Params):
    """scikit-learn ``LogisticRegression`` parameters."""

    C: float = Field(1.0, gt=0)
    max_iter: int = Field(200, ge=1)
    tol: float = Field(1e-4, gt=0)


class CNNParams(_Params):
    """The PyTorch CNN's recipe (see :mod:`mnistops.cnn`)."""

    channels: tuple[int, int] = (24, 48)
    convs_per_block: int = Field(1, ge=1, le=3)
    hidden: int = Field(128, ge=8)
    dropout: float = Field(0.1, ge=0, lt=1)
    epochs: int = Field(12, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(5e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    schedule: Literal["onecycle", "constant"] = "onecycle"
    augment_shift: int = Field(2, ge=0, le=4)
    val_fraction: float = Field(0.05, gt=0, lt=0.5)
    patience: int = Field(5, ge=1)
    threads: int = Field(0, ge=0)  # 0: all cores


PARAMS: dict[str, type[_Params]] = {
    "random_forest": RandomForestParams,
    "extra_trees": ExtraTreesParams,
    "hist_gradient_boosting": HistGradientBoostingParams,
    "logistic_regression": LogisticRegressionParams,
    "cnn": CNNParams,
}

EpochCallback = Callable[[int, dict[str, float]], None]


class Model(Protocol):
    """What every model offers the pipeline (and, later, the server and monitor)."""

    name: str
    kind: str

    def fit(
        self, x: np.ndarray, y: np.ndarray, progress: Reporter | None = None, on_epoch: EpochCallback | None = None
    ) -> None:
        """Fit on features ``float32 (n, 784)`` and labels ``uint8 (n,)``."""

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities ``float (n, 10)`` for features ``float32 (n, 784)``."""
        ...

    def save(self, directory: Path) -> None:
        """Write the fitted model into ``directory`` for :mod:`mnistops.pyfunc_model`."""


class SklearnModel:
    """A scikit-learn estimator, optionally after ``StandardScaler(with_mean=False)``."""

    kind = "sklearn"

    def __init__(self, name: str, params: dict[str, Any], preprocess: str, seed: int) -> None:
        self.name = name
        self.params = params
        self.preprocess = preprocess
        self.seed = seed
        self.scaler: Any = None
        self.estimator: Any = _make_estimator(name, params, seed)

    def fit(
        self, x: np.ndarray, y: np.ndarray, progress: Reporter | None = None, on_epoch: EpochCallback | None = None
    ) -> None:
        """Fit; forests grow in batches of trees so progress shows and signals are handled."""
        progress = progress or NullReporter()
        if self.preprocess == "standard":
            from sklearn.preprocessing import StandardScaler

            self.scaler = StandardScaler(with_mean=False)
            x = self.scaler.fit_transform(x)
        if self.name in ("random_forest", "extra_trees"):
            total = int(self.params["n_estimators"])
            step = max(1, -(-total // 10))
            task = progress.task(f"fit {self.name}", total=total)
            self.estimator.set_params(warm_start=True)
            done = 0
            while done < total:
                n = min(done + step, total)
                self.estimator.set_params(n_estimators=n)
                self.estimator.fit(x, y)
                task.update(n - done)
                done = n
            task.close()
            # Predict on one thread: with several, trees add their votes in whatever order the
            # threads finish, and the float sums differ in the last bit from run to run.
            self.estimator.set_params(warm_start=False, n_jobs=1)
        else:
            task = progress.task(f"fit {self.name}", total=1)
            self.estimator.fit(x, y)
            task.update(1)
            task.close()

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities ``float64 (n, 10)``."""
        return self.pipeline().predict_proba(x)

    def pipeline(self) -> Any:
        """The fitted estimator, with its scaler in a ``Pipeline`` when there is one."""
        if self.scaler is None:
            return self.estimator
        from sklearn.pipeline import Pipeline

        return Pipeline([("scaler", self.scaler), ("clf", self.estimator)])

    def save(self, directory: Path) -> None:
        """``model.joblib`` (zlib level 3: a fifth of the pickle's size) and ``meta.json``."""
        import joblib

        directory.mkdir(parents=True, exist_ok=True)
        joblib.dump(self.pipeline(), directory / "model.joblib", compress=3)
        (directory / "meta.json").write_text(
            json.dumps({"format": MODEL_FORMAT, "kind": self.kind, "name": self.name, "file": "model.joblib"})
        )


def _make_estimator(name: str, params: dict[str, Any], seed: int) -> Any:
    if name == "random_forest":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(random_state=seed, **params)
    if name == "extra_trees":
        from sklearn.ensemble import ExtraTreesClassifier

        return ExtraTreesClassifier(random_state=seed, **params)
    if name == "hist_gradient_boosting":
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(random_state=seed, early_stopping=False, **params)
    if name == "logistic_regression":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(random_state=seed, **params)
    raise ConfigError(f"unknown model {name!r}: use one of {', '.join(PARAMS)}")


def build_model(name: str, params: dict[str, Any], preprocess: str = "none", seed: int = 42) -> Model:
    """Make an unfitted model by name.

    Raises:
        ConfigError: unknown name.
        MissingExtraError: ``cnn`` without torch installed.
    """
    if name not in PARAMS:
        raise ConfigError(f"unknown model {name!r}: use one of {', '.join(PARAMS)}")
    full = PARAMS[name].model_validate(params).model_dump()
    if name == "cnn":
        try:
            import torch  # noqa: F401
        except ImportError:
            raise MissingExtraError(
                "model cnn needs PyTorch, which is not installed: pip install -e '.[cnn]' (see README)"
            ) from None
        from mnistops.cnn import TorchCNN

        return TorchCNN(full, preprocess=preprocess, seed=seed)
    return SklearnModel(name, full, preprocess, seed)
