"""The one configuration object, built at the edge from env < file < ``--set``.

:class:`Config` is a pydantic model with ``extra="forbid"`` everywhere, so an unknown key or a
wrong type is an error that names the key and what is allowed. Model parameters are checked
against the chosen model's own parameter model (:data:`mnistops.catalog.PARAMS`). Defaults
reproduce the notebook's ``run_pipeline.py``: MNIST, the stratified 80/20 split of all 70,000
images with seed 42, and a RandomForest of 150 trees, depth 25.

Environment variables: ``MNISTOPS_<SECTION>__<KEY>`` (double underscore between levels), e.g.
``MNISTOPS_SEED=1`` or ``MNISTOPS_MODEL__PARAMS__N_ESTIMATORS=50``. Only names whose first
part is a config section count; ``MNISTOPS_CACHE_DIR`` and friends are settings, not config.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mnistops.errors import ConfigError

ENV_PREFIX = "MNISTOPS_"
AFTER_TRAINING = ("tracking", "gate", "serve", "monitor")  # config sections that do not change what a run trains


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Which dataset, and from where."""

    dataset: str = "mnist"
    source: str = "auto"
    extra: list[str] = Field(default_factory=list)  # feedback sets (mnistops data from-log): training rows only
    extra_weight: int = Field(1, ge=1, le=100)  # each labeled production input counts as this many rows


class SplitConfig(_Strict):
    """How rows are split into train and test."""

    strategy: Literal["stratified", "official"] = "stratified"
    test_size: float = Field(0.2, gt=0.0, lt=1.0)


class ModelConfig(_Strict):
    """Which model, its preprocessing and its parameters (checked per model)."""

    name: Literal["random_forest", "extra_trees", "hist_gradient_boosting", "logistic_regression", "cnn"] = (
        "random_forest"
    )
    preprocess: Literal["none", "standard"] = "none"
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _complete_params(self) -> ModelConfig:
        # Store the complete, typed parameter set so it is logged and hashed in full.
        # Invalid params are left as given here; build_config reports them by key.
        from mnistops.catalog import PARAMS

        try:
            checked = PARAMS[self.name].model_validate(self.params)
        except ValidationError:
            return self
        object.__setattr__(self, "params", checked.model_dump())
        return self


class TrackingConfig(_Strict):
    """Where runs are recorded. ``MLFLOW_TRACKING_URI`` overrides ``uri``."""

    uri: str | None = None
    timeout: float = Field(5.0, gt=0, le=600)  # seconds a store may take to answer before we give up
    experiment: str = "mnistops"
    registered_model: str = "mnist-classifier"
    run_name: str | None = None


class GateConfig(_Strict):
    """The promotion gate: an absolute floor and a tolerance against the champion."""

    floor_metric: str = "accuracy"
    floor: float = Field(0.95, ge=0.0, le=1.0)
    metric: str = "f1_macro"
    tolerance: float = Field(0.002, ge=0.0, le=1.0)
    lock_wait_s: float = Field(300.0, gt=0)  # how long promote/rollback wait for another's alias lock
    replay_last: int = Field(1000, ge=1)  # production inputs the gate replays from serve.prediction_log
    production_metric: Literal["accuracy"] | None = None  # set: not worse than the champion on labeled ones
    production_tolerance: float = Field(0.0, ge=0.0, le=1.0)


class ServeConfig(_Strict):
    """How ``mnistops serve`` serves a model (none of it changes what a run trains)."""

    model: str | None = None  # a model URI; None: models:/<tracking.registered_model>@champion
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)
    max_batch: int = Field(256, ge=1, le=100_000)  # images in one request (and in one model call)
    max_body_bytes: int = Field(1_000_000, ge=1_000)  # a larger request body is refused with 413
    max_image_pixels: int = Field(16_000_000, ge=784)  # an uploaded image larger than this is not decoded
    # Under load, how long a batch waits for more requests. 0: a batch is what queued while the last
    # one ran (Triton's default); more pays only where a model call costs far more than its images.
    batch_wait_ms: float = Field(0.0, ge=0, le=1000)
    threads: int = Field(4, ge=1, le=256)  # decoding, preprocessing and model calls, off the event loop
    poll_seconds: float = Field(10.0, gt=0)  # how often the champion alias is looked up
    admin_token: str | None = None  # bearer token for POST /admin/reload; None: disabled
    prediction_log: str | None = "predictions.db"  # SQLite file or postgresql:// URL; None: not recorded
    log_max_rows: int = Field(1_000_000, ge=1)
    log_queue_max: int = Field(100_000, ge=1)  # prediction rows that may wait for the disk; more are dropped
    log_max_age_days: float = Field(30.0, gt=0)


class MonitorConfig(_Strict):
    """What ``mnistops monitor`` accepts (none of it changes what a run trains)."""

    max_batch_images: int = Field(100_000, ge=1)  # a batch file or log window larger than this is refused


class Config(_Strict):
    """Everything that defines a training run, and how its model is served."""

    seed: int = Field(42, ge=0, le=2**32 - 1)
    data: DataConfig = Field(default_factory=DataConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready resolved config."""
        return self.model_dump(mode="json")

    def flat(self) -> dict[str, Any]:
        """Dotted keys to values (``model.params.n_estimators``), for MLflow params."""
        return _flatten(self.to_dict())

    def hash(self) -> str:
        """SHA-256 of the canonical JSON of what determines the model.

        ``tracking``, ``gate`` and ``serve`` are left out: where a run is recorded, how it is
        judged and served afterwards, do not change what it trains.
        """
        d = {k: v for k, v in self.to_dict().items() if k not in AFTER_TRAINING}
        return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = target
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"config key {dotted}: {part} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _env_values(environ: Mapping[str, str] | None = None) -> dict[str, tuple[str, Any]]:
    """Dotted key -> (variable name, value) of every ``MNISTOPS_<SECTION>__<KEY>`` variable."""
    environ = os.environ if environ is None else environ
    sections = set(Config.model_fields)
    out: dict[str, tuple[str, Any]] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if parts[0] in sections:
            out[".".join(parts)] = (name, _parse_value(raw))
    return out


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Config values from ``MNISTOPS_<SECTION>__<KEY>`` environment variables."""
    out: dict[str, Any] = {}
    for key, (_, value) in _env_values(environ).items():
        _set_dotted(out, key, value)
    return out


def read_yaml_mapping(p: Path, what: str = "config file") -> dict[str, Any]:
    """The mapping a YAML file holds (a config file, a ``-f`` parameters file), with one-line
    errors that name the file as ``what`` and keep a YAML error's line and column."""
    try:
        loaded = yaml.safe_load(p.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{what} {p} does not exist: give the path of a YAML file") from None
    except yaml.MarkedYAMLError as exc:
        mark, start = exc.problem_mark or exc.context_mark, exc.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        context = str(exc.context or "")
        if context and start is not None and start is not mark:
            context += f" (from line {start.line + 1}, column {start.column + 1})"
        problem = " ".join(part for part in (context, str(exc.problem or "")) if part)
        raise ConfigError(f"{what} {p}{where}: {problem}: fix the YAML there") from None
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"cannot read {what} {p}: {first}") from None
    if not isinstance(loaded, dict) or not all(isinstance(k, str) for k in loaded):
        raise ConfigError(f"{what} {p} must hold a mapping of names to values, not {type(loaded).__name__}")
    return loaded


def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
    base: Mapping[str, Any] | None = None,
) -> Config:
    """Build the config: environment, then ``base`` or the YAML file, then ``--set KEY=VALUE`` overrides.

    ``base`` is a mapping that plays the file's part (a notebook's parameters, say). An error
    names the key, where its value came from (the variable, the file, the ``--set``) and, for a
    key that does not exist, the closest one that does.

    Raises:
        ConfigError: unreadable file, malformed override, unknown key, wrong type or value.
    """
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key, (name, value) in _env_values(environ).items():
        _set_dotted(merged, key, value)
        origin[key] = f"environment variable {name}"
    if base is not None:
        merged = _deep_merge(merged, base)
        origin.update({key: "the notebook's parameters" for key in _flatten(base)})
    if path is not None:
        loaded = read_yaml_mapping(Path(path))
        merged = _deep_merge(merged, loaded)
        origin.update({key: f"config file {path}" for key in _flatten(loaded)})
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r} is not KEY=VALUE: write e.g. --set model.params.n_estimators=120")
        _set_dotted(merged, key.strip(), _parse_value(value))
        origin[key.strip()] = f"--set {item}"
    return build_config(merged, origin)


def build_config(data: Mapping[str, Any], origin: Mapping[str, str] | None = None) -> Config:
    """Validate a plain mapping into a :class:`Config`, with one-line errors.

    ``origin`` maps dotted keys to where their values came from, for the messages.
    """
    from mnistops.catalog import PARAMS

    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, data, (), origin or {})) from None
    try:
        PARAMS[cfg.model.name].model_validate(cfg.model.params)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, data, ("model", "params"), origin or {})) from None
    return cfg


def _origin_of(key: str, origin: Mapping[str, str]) -> str:
    """Where the value at ``key`` (or under it, or above it) came from: `` (from ...)``, or nothing."""
    if key in origin:
        return f" (from {origin[key]})"
    below = [k for k in origin if k.startswith(key + ".")]
    if below:
        return f" (from {origin[below[-1]]})"
    above = [k for k in origin if key.startswith(k + ".")]
    return f" (from {origin[max(above, key=len)]})" if above else ""


def _describe(exc: ValidationError, data: Mapping[str, Any], prefix: tuple[str, ...], origin: Mapping[str, str]) -> str:
    import difflib

    err = exc.errors()[0]
    loc = [*prefix, *(str(p) for p in err["loc"])]
    key = ".".join(loc) or "(root)"
    source = _origin_of(key, origin)
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1], data)
        close = difflib.get_close_matches(loc[-1], allowed, n=1, cutoff=0.6)
        hint = f"did you mean {'.'.join([*loc[:-1], close[0]])}? " if close else ""
        return f"unknown config key {key}{source}: {hint}allowed keys here are {', '.join(allowed)}"
    got = err.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    msg = err["msg"]
    more = f"; {len(exc.errors()) - 1} more problem(s)" if len(exc.errors()) > 1 else ""
    return f"config key {key}{source}: {msg}{shown}{more}"


def _allowed_keys(section: list[str], data: Mapping[str, Any]) -> list[str]:
    model: type[BaseModel] = Config
    for part in section:
        if part == "params" and model is ModelConfig:
            from mnistops.catalog import PARAMS

            name = (data.get("model") or {}).get("name", "random_forest")
            return sorted(PARAMS.get(name, PARAMS["random_forest"]).model_fields)
        field = model.model_fields.get(part)
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return sorted(model.model_fields)


# --- notebooks ---------------------------------------------------------------------------
# A training notebook's parameters are a flat view of the config: these names stand for these
# keys; ``n_estimators`` and ``max_depth`` stand for the forest's own parameters (0 depth: no
# limit); ``model_params`` holds any other model parameter; ``overrides`` any other key.

NOTEBOOK_KEYS = {
    "dataset": "data.dataset",
    "source": "data.source",
    "seed": "seed",
    "split": "split.strategy",
    "test_size": "split.test_size",
    "model": "model.name",
}
FOREST_SHORTCUTS = ("n_estimators", "max_depth")


def notebook_mapping(values: Mapping[str, Any]) -> dict[str, Any]:
    """The config keys a notebook's parameters set (only those: it plays a config file's part).

    ``values`` may hold the names of :data:`NOTEBOOK_KEYS`, the forest shortcuts and
    ``model_params``; the shortcuts apply to the forests only, whose parameters they are.
    """
    from mnistops.catalog import FORESTS

    mapping: dict[str, Any] = {}
    for name, key in NOTEBOOK_KEYS.items():
        if name in values:
            _set_dotted(mapping, key, values[name])
    params = dict(values.get("model_params") or {})
    if values.get("model", "random_forest") in FORESTS:
        if "n_estimators" in values:
            params["n_estimators"] = values["n_estimators"]
        if "max_depth" in values:
            params["max_depth"] = values["max_depth"] or None
    if params:
        mapping.setdefault("model", {})["params"] = params
    return mapping


def from_notebook(
    values: Mapping[str, Any],
    config_file: str | Path = "",
    overrides: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> Config:
    """The config a notebook's parameters describe (the inverse of :func:`notebook_values`).

    With ``config_file`` set, the config is that file plus ``overrides``, as for
    ``mnistops train --config FILE --set ...``, and ``values`` are not used. Otherwise the
    parameters (:func:`notebook_mapping`) play the part of the file: the environment is beneath
    them and ``overrides`` above them.
    """
    if config_file:
        return load_config(config_file, overrides, environ)
    return load_config(None, overrides, environ, base=notebook_mapping(values))


def notebook_values(cfg: Config) -> dict[str, Any]:
    """A config as a training notebook's parameters: what ``run_notebooks.py`` injects.

    Only model parameters and other keys that differ from their defaults are listed, so the
    injected cell stays short; :func:`from_notebook` of the result gives ``cfg`` back.
    """
    from mnistops.catalog import FORESTS, PARAMS

    flat = cfg.flat()
    values: dict[str, Any] = {name: flat[key] for name, key in NOTEBOOK_KEYS.items()}
    params = dict(cfg.model.params)
    if cfg.model.name in FORESTS:
        values["n_estimators"] = params.pop("n_estimators")
        values["max_depth"] = params.pop("max_depth") or 0
    defaults = PARAMS[cfg.model.name]().model_dump()
    values["model_params"] = {k: v for k, v in params.items() if v != defaults.get(k)}
    covered = {*NOTEBOOK_KEYS.values(), "model.params"}
    default_flat = Config().flat()
    values["overrides"] = [
        f"{key}={_format_value(value)}"
        for key, value in flat.items()
        if key not in covered and not key.startswith("model.params.") and value != default_flat.get(key)
    ]
    return values


def _format_value(value: Any) -> str:
    """``value`` as ``--set`` text that :func:`_parse_value` reads back as the same value."""
    if isinstance(value, str) and _parse_value(value) == value:
        return value
    return json.dumps(value)


def dump_yaml(cfg: Config) -> str:
    """The resolved config of a run as YAML (what a run saves, and what ``--config`` reads back).

    The ``serve`` section is left out: how a model is served later is not part of the run that
    trained it (and ``serve.admin_token`` is a secret that anyone who can read the store would see).
    """
    d = cfg.to_dict()
    d.pop("serve", None)
    return yaml.safe_dump(d, sort_keys=False)
