"""A search space, declared in YAML per model (``configs/space/<model>.yaml``), checked up front.

.. code-block:: yaml

    model: random_forest        # the model every trial trains
    metric: accuracy            # what the sweep optimizes: a metric of the training run
    direction: maximize         # or minimize (default: minimize for log_loss, else maximize)
    params:                     # the model's own parameters (model.params.*)
      n_estimators: {type: int, low: 20, high: 200, step: 10}
      max_features: {type: float, low: 0.02, high: 0.3, log: true}
      criterion: {type: categorical, choices: [gini, entropy]}

Every parameter must be one the model accepts, and every bound and choice a value it accepts:
both are checked against the model's parameter model before any trial runs, so a typo is one
line, not six failed trials.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mnistops.config import read_yaml_mapping
from mnistops.errors import ConfigError

METRICS = ("accuracy", "f1_macro", "f1_weighted", "log_loss")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IntParam(_Strict):
    """An integer in [low, high], on a grid of ``step`` or on a log scale."""

    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> IntParam:
        if self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        if self.log and (self.step != 1 or self.low < 1):
            raise ValueError("a log scale needs low >= 1 and step 1")
        return self

    def bounds(self) -> list[Any]:
        return [self.low, self.high]

    def distribution(self) -> Any:
        from optuna.distributions import IntDistribution

        return IntDistribution(self.low, self.high, log=self.log, step=self.step)


class FloatParam(_Strict):
    """A float in [low, high], optionally on a log scale or a grid of ``step``."""

    type: Literal["float"]
    low: float
    high: float
    step: float | None = Field(None, gt=0)
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatParam:
        if self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("a log scale needs low > 0 and no step")
        return self

    def bounds(self) -> list[Any]:
        return [self.low, self.high]

    def distribution(self) -> Any:
        from optuna.distributions import FloatDistribution

        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)


class CategoricalParam(_Strict):
    """One of ``choices`` (strings, numbers, booleans or null)."""

    type: Literal["categorical"]
    choices: list[str | int | float | bool | None] = Field(min_length=1)

    def bounds(self) -> list[Any]:
        return list(self.choices)

    def distribution(self) -> Any:
        from optuna.distributions import CategoricalDistribution

        return CategoricalDistribution(self.choices)


Param = Annotated[IntParam | FloatParam | CategoricalParam, Field(discriminator="type")]


class Space(_Strict):
    """What a sweep searches: one model, one metric, the ranges of its parameters."""

    model: Literal["random_forest", "extra_trees", "hist_gradient_boosting", "logistic_regression", "cnn"]
    metric: Literal["accuracy", "f1_macro", "f1_weighted", "log_loss"] = "accuracy"
    direction: Literal["maximize", "minimize"] | None = None
    params: dict[str, Param] = Field(min_length=1)

    @model_validator(mode="after")
    def _direction(self) -> Space:
        if self.direction is None:
            object.__setattr__(self, "direction", "minimize" if self.metric == "log_loss" else "maximize")
        return self

    def distributions(self) -> dict[str, Any]:
        """Optuna's distributions, by parameter name."""
        return {name: p.distribution() for name, p in self.params.items()}

    def describe(self) -> dict[str, Any]:
        """JSON-ready, for the sweep run's params."""
        return {name: p.model_dump(exclude_defaults=False) for name, p in self.params.items()}


def default_path(root: Path, model: str) -> Path:
    """Where a model's space is, by convention."""
    return root / "configs" / "space" / f"{model}.yaml"


def load_space(path: Path) -> Space:
    """Read and check a search space file.

    Raises:
        ConfigError: an unreadable file, an unknown key or type, a bound out of order, a parameter
            the model does not accept or a value it refuses; one line naming the file and the key.
    """
    data = read_yaml_mapping(path, what="search space")
    try:
        space = Space.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        # A discriminated union reports the tag in the path (params.n.int.low): drop it.
        loc = [str(p) for p in err["loc"] if str(p) not in ("int", "float", "categorical")]
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"search space {path}: {'.'.join(loc) or '(root)'}: {msg}{shown}") from None
    check_against_model(space, path)
    return space


def check_against_model(space: Space, path: Path | str) -> None:
    """Every parameter is one the model accepts, every bound and choice a value it accepts."""
    from mnistops.catalog import PARAMS

    model = PARAMS[space.model]
    accepted = sorted(model.model_fields)
    for name, p in space.params.items():
        if name not in model.model_fields:
            import difflib

            close = difflib.get_close_matches(name, accepted, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(
                f"search space {path}: {space.model} has no parameter {name!r}: {hint}it accepts {', '.join(accepted)}"
            )
        for value in p.bounds():
            try:
                model.model_validate({name: value})
            except ValidationError as exc:
                msg = exc.errors()[0]["msg"]
                raise ConfigError(
                    f"search space {path}: params.{name}: {space.model} refuses {value!r} ({msg}): narrow the range"
                ) from None
