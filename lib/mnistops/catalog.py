"""The models mnistops trains, by name, and each one's parameters with their constraints.

Below the config, which checks ``model.params`` against :data:`PARAMS` when it is built, and below
:mod:`mnistops.train`, which builds the models. Pydantic models with ``extra="forbid"``: an
unknown parameter or a value out of range is an error that names it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

FORESTS = ("random_forest", "extra_trees")


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
    """The PyTorch CNN's recipe (see :mod:`mnistops.train.cnn`)."""

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
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when torch sees a GPU
    amp: Literal["off", "bf16"] = "off"  # bf16: the forward pass under bfloat16 autocast (CUDA)


PARAMS: dict[str, type[_Params]] = {
    "random_forest": RandomForestParams,
    "extra_trees": ExtraTreesParams,
    "hist_gradient_boosting": HistGradientBoostingParams,
    "logistic_regression": LogisticRegressionParams,
    "cnn": CNNParams,
}
