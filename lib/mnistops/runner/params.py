"""What each notebook of a batch is given: the config's values, then ``-f`` files, then ``-p``.

* The config (built as for ``mnistops train``: environment < ``--config`` file < ``--set``) is
  turned into notebook parameters by :func:`mnistops.config.notebook_values`. Without
  ``--config`` the base is the training notebook's own defaults, so ``python run_notebooks.py``
  runs what a student gets by running the notebooks top to bottom.
* ``-f PARAMS.yaml`` (a mapping) and ``-p NAME VALUE`` come next, the last one given winning.
  A ``-p`` value is read as the type its notebook declares: ``-p experiment 007`` stays the
  string ``"007"``, ``-p n_estimators 7`` is the integer 7, lists and dicts are YAML.
* A name that no notebook of the batch declares is refused before anything runs, with each
  notebook's parameters in the message (papermill itself only warns and goes on).

Each notebook receives only the names it declares.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from mnistops.config import Config, notebook_values, read_yaml_mapping
from mnistops.errors import ConfigError
from mnistops.runner.notebooks import Notebook, Parameter, default_value

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def coerce(text: str, param: Parameter, where: str) -> Any:
    """Read ``-p`` text as the type ``param`` declares (``any``: YAML's reading)."""
    kind = param.type.replace(" ", "").lower()
    try:
        if kind == "str":
            return text
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "bool":
            low = text.lower()
            if low in _TRUE | _FALSE:
                return low in _TRUE
            raise ValueError(text)
        value = yaml.safe_load(text)
    except (ValueError, yaml.YAMLError):
        raise ConfigError(
            f"-p {param.name} {text!r}: {where} declares {param.name} as {param.type}; give a {param.type} value"
        ) from None
    if kind.startswith("list") and not isinstance(value, list):
        raise ConfigError(f"-p {param.name} {text!r}: {where} wants a list, e.g. -p {param.name} '[a, b]'")
    if kind.startswith("dict") and not isinstance(value, dict):
        raise ConfigError(f"-p {param.name} {text!r}: {where} wants a mapping, e.g. -p {param.name} '{{key: 1}}'")
    return value


def read_params_file(path: Path) -> dict[str, Any]:
    """A ``-f`` YAML file: a mapping of parameter names to values."""
    return read_yaml_mapping(path, what="-f parameters file")


def base_config_values(notebooks: Sequence[Notebook]) -> dict[str, Any]:
    """The training notebook's defaults, as the mapping the config is built on without ``--config``."""
    for nb in notebooks:
        if "model" in nb.parameters and "dataset" in nb.parameters:
            return {name: default_value(p) for name, p in nb.parameters.items()}
    return {}


def check_names(names: Sequence[str], notebooks: Sequence[Notebook], flag: str) -> None:
    """Refuse any name that no notebook of the batch declares, listing what each declares."""
    declared = {n for nb in notebooks for n in nb.parameters}
    unknown = [n for n in names if n not in declared]
    if unknown:
        listing = "; ".join(f"{nb.name}: {nb.describe_parameters()}" for nb in notebooks)
        raise ConfigError(f"{flag} {unknown[0]}: no notebook of this batch declares it; they declare {listing}")


def plan(
    notebooks: Sequence[Notebook],
    cfg: Config,
    files: Sequence[Path] = (),
    pairs: Sequence[tuple[str, str]] = (),
    extra: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """The parameters to inject into each notebook, by notebook name.

    Args:
        notebooks: the batch, in order.
        cfg: the resolved config.
        files: ``-f`` files, in the order given.
        pairs: ``-p NAME VALUE`` pairs, in the order given.
        extra: values the runner itself sets (``batch_run_id``, say), for notebooks declaring them.
    """
    from_files: dict[str, Any] = {}
    for path in files:
        loaded = read_params_file(path)
        check_names(list(loaded), notebooks, f"-f {path}:")
        from_files.update(loaded)
    check_names([name for name, _ in pairs], notebooks, "-p")
    values = {**notebook_values(cfg), **(extra or {}), **from_files}
    out: dict[str, dict[str, Any]] = {}
    for nb in notebooks:
        params = {name: value for name, value in values.items() if name in nb.parameters}
        for name, text in pairs:
            if name in nb.parameters:
                params[name] = coerce(text, nb.parameters[name], nb.name)
        out[nb.name] = params
    return out
