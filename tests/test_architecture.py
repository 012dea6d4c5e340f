"""What the code is held to, so that a newcomer can change it: layers that import downward (and a
deliberate upward import caught), short functions, one vocabulary for the run record, no
hand-packed formatting, a README whose Layout is true."""

from __future__ import annotations

import ast
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "lib" / "mnistops"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint_imports(lib_parent: Path, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), str(config), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=lib_parent,
        # A wide console: the report is wrapped to the terminal, and the asserts read whole lines.
        env={"PYTHONPATH": str(lib_parent), "PATH": str(Path(sys.executable).parent), "COLUMNS": "200"},
        check=False,
    )


def test_the_layers_hold_and_an_upward_import_breaks_them(tmp_path: Path) -> None:
    if not LINT_IMPORTS.exists():
        pytest.skip("needs import-linter (the dev extra)")
    kept = _lint_imports(ROOT / "lib", ROOT / "pyproject.toml")
    assert kept.returncode == 0, kept.stdout[-3000:]
    assert "Layers import downward only KEPT" in kept.stdout
    assert "No import cycles between the modules of a layer's package KEPT" in kept.stdout
    # The same package, with one import from a low layer to the top one, inside a function.
    copy = tmp_path / "lib" / "mnistops"
    shutil.copytree(LIB, copy, ignore=shutil.ignore_patterns("__pycache__"))
    split = copy / "data" / "split.py"
    split.write_text(split.read_text() + "\n\ndef _upward() -> None:\n    from mnistops import cli  # noqa\n")
    broken = _lint_imports(tmp_path / "lib", ROOT / "pyproject.toml")
    assert broken.returncode != 0
    assert "Layers import downward only BROKEN" in broken.stdout
    assert "mnistops.data is not allowed to import mnistops.cli" in broken.stdout
    assert "- mnistops.data.split -> mnistops.cli" in broken.stdout


def _functions() -> list[tuple[str, int]]:
    out = []
    for path in sorted(LIB.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno is not None:
                out.append((f"{path.relative_to(LIB)}:{node.lineno} {node.name}", node.end_lineno - node.lineno + 1))
    return out


def test_no_function_is_longer_than_a_screen() -> None:
    long = [(where, n) for where, n in _functions() if n > 80]
    assert long == [], f"functions over 80 lines: {long}"


def test_the_pipeline_is_its_stage_order_on_one_screen() -> None:
    (n,) = [n for where, n in _functions() if where.startswith("pipeline/__init__.py") and where.endswith(" train")]
    assert n <= 60, n


def _record_keys() -> set[str]:
    import mnistops.record as record

    return {v for k, v in vars(record).items() if k.isupper() and isinstance(v, str) and v.startswith("mnistops.")}


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def test_tag_keys_are_written_only_in_the_vocabulary() -> None:
    keys = _record_keys()
    assert len(keys) > 40
    namespaces = tuple({key.rsplit(".", 1)[0] + "." for key in keys if key.count(".") > 1} - {"mnistops.data."})
    found = []
    for path in sorted(LIB.rglob("*.py")):
        if path.name == "record.py":
            continue
        tree = ast.parse(path.read_text())
        prose = _docstrings(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in prose:
                continue
            for word in re.findall(r"mnistops\.[a-z_]+(?:\.[a-z_{}]+)*", node.value):
                if (word in keys or word.startswith(namespaces)) and not _is_module(word):
                    found.append(f"{path.relative_to(LIB)}:{node.lineno} {word}")
    assert found == [], found


def test_the_formatter_owns_the_formatting() -> None:
    skips = [
        f"{path.relative_to(ROOT)}:{i}"
        for folder in ("lib", "tests", "benchmarks")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if "fmt: " + "skip" in line or "fmt: " + "off" in line
    ]
    assert skips == []


def test_the_readme_layout_lists_what_lib_holds() -> None:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    lines = block.split("lib/mnistops/", 1)[1].splitlines()[1:]
    listed: dict[str, list[str]] = {}
    for line in lines:
        name, _, rest = line.strip().partition(" ")
        listed[name] = [w.strip() for w in rest.split(",")] if name.endswith("/") else []
    here = {p.name + "/" for p in LIB.iterdir() if p.is_dir() and p.name != "__pycache__"}
    here |= {p.name for p in LIB.glob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    assert set(listed) == here
    for package, words in listed.items():
        if not package.endswith("/"):
            continue
        folder = LIB / package
        modules = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
        modules |= {p.name + "/" for p in folder.iterdir() if p.is_dir() and p.name != "__pycache__"}
        named = {w.split(" ")[0] for w in words if w}
        assert named == modules, (package, sorted(named ^ modules))


def test_one_mapping_turns_errors_into_exit_codes() -> None:
    """Both entry points go through cli.common.run_guarded; nothing else in the CLI catches our
    errors, interrupts or signals to decide an exit code."""
    for path, name in ((LIB / "cli" / "__init__.py", "main"), (LIB / "cli" / "notebooks.py", "main")):
        (fn,) = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef) and n.name == name]
        called = {n.func.id for n in ast.walk(fn) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert "run_guarded" in called, path
    catching = []
    for path in sorted((LIB / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                caught = ast.unparse(node.type)
                if any(e in caught for e in ("MnistopsError", "KeyboardInterrupt", "Terminated")):
                    catching.append(f"{path.name}:{node.lineno} {caught}")
    assert all(c.startswith("common.py:") for c in catching), catching
    assert len(catching) == 2  # KeyboardInterrupt and Terminated, once each, in run_guarded
