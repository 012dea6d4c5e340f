"""The notebooks of a batch: which ones, in what order, what each declares, and its content hash.

A notebook belongs to the batch when its name starts with two digits (``01_explore.ipynb``);
the digits are its place in the run order. A notebook can keep itself out of the default batch
with ``"mnistops": {"batch": false}`` in its metadata (one that starts a server, say): it then
runs only when named with ``--only``.

What a notebook hands on and what it takes from earlier notebooks is declared in the same place:
``"makes": {"training_run_id": "str"}`` (``03_train``: the training run it records on the batch
run) and ``"takes": {"run_id": "training_run_id"}`` (``04_evaluate``: its parameter ``run_id``
gets that value). The runner passes the values on, and :func:`check_needs` refuses, before
anything runs, a notebook whose value no notebook before it makes and no ``-p`` gives. A notebook
whose run is not a function of its inputs says ``"reuse": false`` (``05_serve`` starts a server,
``06_monitor`` reads a window that moves with the clock, ``07_retrain`` promotes): it always runs,
never ``cached`` (:mod:`mnistops.runner.reuse`). ``"after": [...]`` names the notebooks it must
wait for besides those whose values it takes; a notebook without ``after`` waits for every
notebook before it, one with ``"after": []`` only for what it takes, and may run beside the others
(:mod:`mnistops.runner.schedule`).

Parameters are read from the cell tagged ``parameters`` the way papermill reads them
(``name: type = default  # help``), by a copy of its parser: importing papermill costs seconds
(nbformat's JSON-schema stack), and the runner reads the notebooks before anything else so that
the first kernel can start at once. A test checks that both agree on every notebook.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnistops import threadsafe_ast
from mnistops.errors import ConfigError, DataError

NAME = re.compile(r"^(\d\d)_[A-Za-z0-9_]+\.ipynb$")
# papermill.translators.PythonTranslator.PARAMETER_PATTERN
PARAMETER = re.compile(
    r"^(?P<target>\w[\w_]*)\s*(:\s*[\"']?(?P<annotation>\w[\w_\[\],\s]*)[\"']?\s*)?=\s*(?P<value>.*?)"
    r"(\s*#\s*(type:\s*(?P<type_comment>[^\s]*)\s*)?(?P<help>.*))?$"
)


@dataclass(frozen=True)
class Parameter:
    """One declared parameter: its name, type (as written), default (as source text) and help."""

    name: str
    type: str
    default: str
    help: str


@dataclass(frozen=True)
class Notebook:
    """A notebook of the suite.

    Attributes:
        path: the ``.ipynb`` file.
        name: its stem, e.g. ``03_train``.
        parameters: what its ``parameters`` cell declares, by name, in cell order.
        sha256: hash of its cells' types and sources (not outputs or metadata): what it runs.
        in_batch: whether it runs when no ``--only`` is given.
    """

    path: Path
    name: str
    parameters: dict[str, Parameter] = field(default_factory=dict)
    sha256: str = ""
    in_batch: bool = True
    takes: dict[str, str] = field(default_factory=dict)  # parameter: the value an earlier notebook makes
    makes: dict[str, str] = field(default_factory=dict)  # value: its type
    reusable: bool = True  # False: it always runs (a server, a time window, a promotion)
    after: tuple[str, ...] | None = None  # notebooks it waits for besides its takes (None: all before it)

    def describe_parameters(self) -> str:
        """``name: type`` of each parameter, comma-separated (for error messages)."""
        return ", ".join(f"{p.name}: {p.type}" for p in self.parameters.values()) or "(none)"


def read(path: Path) -> Notebook:
    """Read one notebook: its parameters cell, content hash and batch membership."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        cells = raw["cells"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read notebook {path}: {exc}: it must be a Jupyter .ipynb file") from None
    digest = hashlib.sha256()
    params: dict[str, Parameter] = {}
    for cell in cells:
        source = "".join(cell.get("source", []))
        digest.update(cell.get("cell_type", "").encode() + b"\0" + source.encode() + b"\0")
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            params = parse_parameters(source)
    declared = raw.get("metadata", {}).get("mnistops", {})
    takes, makes = declared.get("takes", {}), declared.get("makes", {})
    if not isinstance(takes, dict) or not isinstance(makes, dict) or not set(takes) <= set(params):
        raise ConfigError(
            f"notebook {path.name}: its metadata's mnistops.takes must map its parameters to values and "
            'mnistops.makes values to types, e.g. {"takes": {"run_id": "training_run_id"}}'
        )
    after = declared.get("after")
    if after is not None and (not isinstance(after, list) or not all(isinstance(a, str) for a in after)):
        raise ConfigError(
            f"notebook {path.name}: its metadata's mnistops.after must list the notebooks it waits for, "
            'e.g. {"after": ["04_evaluate"]}, or be [] for none'
        )
    batch, reusable = bool(declared.get("batch", True)), bool(declared.get("reuse", True))
    waits = None if after is None else tuple(a.removesuffix(".ipynb") for a in after)
    return Notebook(path, path.stem, params, digest.hexdigest(), batch, takes, makes, reusable, waits)


def check_needs(notebooks: list[Notebook], given: dict[str, dict[str, Any]]) -> None:
    """Refuse a notebook that takes a value no notebook before it makes and ``given`` (its
    ``-p``/``-f`` values) does not hold, in one line, before anything runs."""
    made: dict[str, str] = {}
    for nb in notebooks:
        for param, value in nb.takes.items():
            if value not in made and param not in given.get(nb.name, {}):
                raise ConfigError(
                    f"notebook {nb.name} takes {param} from {value}, which no notebook before it makes: "
                    f"run the one that makes it too, or pass -p {param} VALUE"
                )
        made.update({value: nb.name for value in nb.makes})


def parse_parameters(source: str) -> dict[str, Parameter]:
    """The parameters a ``parameters`` cell declares, as papermill's ``PythonTranslator.inspect``
    reads them: a value may run over several lines (a dict, a list); a line with two ``=`` is
    skipped; the comment after a value is its help."""
    groups: list[str] = []
    acc: list[str] = []
    for line in source.splitlines():
        if not line.strip() or line.strip().startswith("#"):
            continue
        n_equal = line.count("=")
        if n_equal > 0:
            groups.append(_flatten(acc))
            acc = []
            if n_equal > 1:
                continue
        acc.append(line)
    groups.append(_flatten(acc))
    params: dict[str, Parameter] = {}
    for definition in groups:
        match = PARAMETER.match(definition) if definition else None
        if match is None:
            continue
        g = match.groupdict()
        type_name = str(g["annotation"] or g["type_comment"] or "any").strip()
        params[g["target"].strip()] = Parameter(
            g["target"].strip(), type_name, str(g["value"]).strip(), str(g["help"] or "").strip()
        )
    return params


def _flatten(lines: list[str]) -> str:
    """One definition from its lines, comments dropped but the last line's (its help)."""
    flat = "".join(ln[: ln.index("#")].strip() if "#" in ln else ln.strip() for ln in lines[:-1])
    return flat + (lines[-1].strip() if lines else "")


def discover(directory: Path, only: list[str] | None = None) -> list[Notebook]:
    """The batch's notebooks in run order: every numbered notebook in ``directory`` (those that
    opt out left aside), or just the ones ``only`` names (by stem, file name or number)."""
    if not directory.is_dir():
        raise ConfigError(
            f"notebook folder {directory} does not exist: run from the project's root or pass --notebooks"
        )
    found = sorted(p for p in directory.glob("*.ipynb") if NAME.match(p.name))
    if not found:
        raise ConfigError(f"no numbered notebooks (NN_name.ipynb) in {directory}")
    notebooks = [read(p) for p in found]
    if not only:
        return [nb for nb in notebooks if nb.in_batch]
    chosen: list[Notebook] = []
    for want in only:
        match = named(notebooks, want, "--only")
        if match not in chosen:
            chosen.append(match)
    return sorted(chosen, key=lambda nb: nb.name)


def named(notebooks: list[Notebook], want: str, flag: str) -> Notebook:
    """The notebook ``want`` names (its stem, file name or number), or a one-line error naming ``flag``."""
    key = want.removesuffix(".ipynb")
    match = next((nb for nb in notebooks if key in (nb.name, nb.name[:2])), None)
    if match is None:
        names = ", ".join(nb.name for nb in notebooks)
        raise ConfigError(f"{flag} {want!r} names no notebook: choose from {names}")
    return match


def default_value(param: Parameter) -> Any:
    """A parameter's default as a Python value (``ast.literal_eval`` of its source text)."""
    try:
        return ast.literal_eval(parse_python(param.default.lstrip(" \t"), "eval"))
    except (ValueError, SyntaxError):
        return param.default


def parse_python(source: str, mode: str = "exec") -> ast.AST:
    """``ast.parse``, safe beside other threads that parse (:mod:`mnistops.threadsafe_ast`).

    Raises:
        SyntaxError: ``source`` is not Python.
    """
    threadsafe_ast.install()
    return ast.parse(source, mode=mode)
