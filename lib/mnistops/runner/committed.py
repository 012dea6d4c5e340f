"""The notebooks as committed: executed, with their outputs, minus what changes from run to run.

Committed notebooks carry their outputs so that a student reading the repository sees every
table and figure without running anything, and so that nbval has the documented results to
compare (cells marked ``# NBVAL_CHECK_OUTPUT``). What would differ on every run is left out:

* outputs of cells tagged ``nbval-ignore-output`` (run ids, model URIs, store paths, timings);
* papermill's and nbclient's metadata (times, durations) and widget state.

:func:`refresh` executes the notebooks with their defaults, in order, in a throwaway working
folder and MLflow store, and writes them back so. :func:`problems` is the rule a test enforces:
outputs present and numbered, nothing volatile, no absolute path, no run id, a size limit.

Run it as ``make notebooks`` (``python -m mnistops.runner.committed notebooks/*.ipynb``).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mnistops import processes

VOLATILE_TAG = "nbval-ignore-output"
MAX_BYTES = 1_500_000
# A path that names a place on one machine, and a 32-hex MLflow run id.
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])(/(home|root|tmp|Users|var|work|opt|private)/|[A-Za-z]:\\\\)")
RUN_ID = re.compile(r"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")
KEEP_NOTEBOOK_METADATA = ("kernelspec", "language_info", "mnistops")


def _text_of(outputs: list[Any]) -> str:
    parts = []
    for out in outputs:
        if "text" in out:
            parts.append("".join(out["text"]))
        for mime, value in out.get("data", {}).items():
            if mime.startswith("text/") or mime.endswith("json"):
                parts.append(value if isinstance(value, str) else "".join(value) if isinstance(value, list) else "")
    return "\n".join(parts)


def clean(nb: Any) -> Any:
    """``nb`` (an executed ``NotebookNode``) as it is committed."""
    nb.metadata = {k: v for k, v in nb.metadata.items() if k in KEEP_NOTEBOOK_METADATA}
    for cell in nb.cells:
        for key in ("papermill", "execution", "widgets"):
            cell.metadata.pop(key, None)
        if cell.cell_type == "code" and VOLATILE_TAG in cell.metadata.get("tags", []):
            cell.outputs = []
        if cell.cell_type == "code":
            for out in cell.outputs:
                out.get("metadata", {}).pop("papermill", None)
    return nb


def problems(path: Path) -> list[str]:
    """What keeps a committed notebook from the rule (empty when it keeps it)."""
    import nbformat

    found: list[str] = []
    size = path.stat().st_size
    if size > MAX_BYTES:
        found.append(f"{path.name}: {size:,} bytes, over the {MAX_BYTES:,} limit")
    nb = nbformat.read(path, as_version=4)
    if nb.metadata.get("kernelspec", {}).get("name") != "python3":
        found.append(f"{path.name}: kernelspec name must be python3")
    extra = set(nb.metadata) - set(KEEP_NOTEBOOK_METADATA)
    if extra:
        found.append(f"{path.name}: notebook metadata {sorted(extra)} is not committed")
    last = 0
    for i, cell in enumerate(nb.cells):
        where = f"{path.name} cell {i}"
        if cell.cell_type != "code":
            continue
        if "papermill" in cell.metadata or "execution" in cell.metadata:
            found.append(f"{where}: run metadata (papermill, execution times) is not committed")
        count = cell.execution_count
        if count is None or count <= last:
            found.append(f"{where}: not executed in order (execution count {count})")
        last = count or last
        volatile = VOLATILE_TAG in cell.metadata.get("tags", [])
        if volatile and cell.outputs:
            found.append(f"{where}: tagged {VOLATILE_TAG} but has outputs")
        text = _text_of(cell.outputs) + "\n" + "".join(cell.source)
        if m := ABSOLUTE_PATH.search(text):
            found.append(f"{where}: absolute path {m.group(0)!r}")
        if m := RUN_ID.search(text):
            found.append(f"{where}: a run id {m.group(0)!r}")
        if any(o.get("output_type") == "error" for o in cell.outputs):
            found.append(f"{where}: an error output")
    return found


def refresh(paths: Sequence[Path], timeout: float = 1800) -> None:
    """Execute ``paths`` in order with their defaults (a fresh kernel each, a throwaway store and
    working folder), then write each back cleaned (see :func:`clean`)."""
    import nbformat
    import papermill

    with processes.temporary_directory("refresh") as tmp:
        old = os.environ.get("MLFLOW_TRACKING_URI")
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        try:
            for path in paths:
                out = Path(tmp) / path.name
                papermill.execute_notebook(
                    str(path),
                    str(out),
                    kernel_name="python3",
                    cwd=tmp,
                    progress_bar=False,
                    execution_timeout=timeout,
                    coalesce_streams=True,
                )
                nb = clean(nbformat.read(out, as_version=4))
                nbformat.write(nb, path)
        finally:
            if old is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = old


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mnistops.runner.committed NOTEBOOK...``: refresh, then check, the notebooks."""
    paths = [Path(a) for a in (sys.argv[1:] if argv is None else argv)]
    if not paths:
        sys.stderr.write("usage: python -m mnistops.runner.committed notebooks/*.ipynb\n")
        return 2
    refresh(sorted(paths))
    issues = [p for path in paths for p in problems(path)]
    for issue in issues:
        sys.stderr.write(f"error: {issue}\n")
    return 1 if issues else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
