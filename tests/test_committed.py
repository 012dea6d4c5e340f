"""The notebooks as committed keep the rule: outputs, in order, nothing volatile or machine-bound."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest

from mnistops.runner.committed import MAX_BYTES, VOLATILE_TAG, clean, problems

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_keeps_the_rule(path: Path) -> None:
    assert problems(path) == []
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    shown = [c for c in code if VOLATILE_TAG not in c.metadata.get("tags", [])]
    assert sum(bool(c.outputs) for c in shown) >= len(shown) // 2  # students see results without running
    assert nb.cells[0].cell_type == "markdown" and "**Needs:**" in nb.cells[0].source
    assert "parameters" in code[0].metadata.get("tags", []) and code[1].source.startswith("%load_ext mnistops.ipython")


def test_the_documented_results_are_checked_cells() -> None:
    checked = {
        p.stem: "".join(
            "".join(o.get("text", ""))
            for c in nbformat.read(p, as_version=4).cells
            if c.cell_type == "code" and c.source.startswith("# NBVAL_CHECK_OUTPUT")
            for o in c.outputs
        )
        for p in NOTEBOOKS
    }
    assert "6197f8243ba91608533360a60d53dbba53ab46f65618e2888573ce96f5386618" in checked["02_validate"]
    assert "PASS: mnist, 70,000 images" in checked["02_validate"]
    assert checked["03_train"] == "accuracy 0.9669\nmacro F1 0.9666\n"
    balance = next(c for c in nbformat.read(NOTEBOOKS[0], as_version=4).cells if "NBVAL_CHECK_OUTPUT" in c.source)
    assert "5923" in balance.outputs[0]["data"]["text/plain"]


def test_the_rule_catches_what_must_not_be_committed(tmp_path: Path) -> None:
    path = tmp_path / NOTEBOOKS[2].name
    shutil.copy(NOTEBOOKS[2], path)
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code" and VOLATILE_TAG not in c.metadata.get("tags", [])]
    code[3].outputs = [nbformat.v4.new_output("stream", name="stdout", text="store /home/ana/mlflow.db\n")]
    code[4].outputs = [nbformat.v4.new_output("stream", name="stdout", text="run 0be4c389f48943c0ab66487151200d08\n")]
    code[5].execution_count = None
    volatile = next(c for c in nb.cells if VOLATILE_TAG in c.metadata.get("tags", []))
    volatile.outputs = [nbformat.v4.new_output("stream", name="stdout", text="1.2 s\n")]
    nb.metadata["papermill"] = {"duration": 3}
    nbformat.write(nb, path)
    found = "\n".join(problems(path))
    for expected in (
        "absolute path '/home/",
        "a run id '0be4c389",
        "not executed in order",
        f"tagged {VOLATILE_TAG}",
        "notebook metadata ['papermill']",
    ):
        assert expected in found
    nbformat.write(clean(nbformat.read(path, as_version=4)), path)
    assert "papermill" not in "\n".join(problems(path)) and VOLATILE_TAG not in "\n".join(problems(path))
    path.write_bytes(path.read_bytes() + b" " * MAX_BYTES)
    assert any("over the" in p for p in problems(path))
