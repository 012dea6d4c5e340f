"""What changed between two executed notebook suites (``mnistops notebooks diff A B``).

Two batch runs of the store are compared on what a reviewer asks first: the values injected into
the notebooks (the batch run's params), the metrics (the batch's own, timings left out, and its
training run's headline metrics), the checked outputs (cells marked ``# NBVAL_CHECK_OUTPUT``),
and each notebook's own differences: nbdime diffs the two executed copies (cell sources and
outputs; metadata and execution counts left out) and renders them as text. The page
(:func:`write_html`) holds all of it in plain HTML, with no script and no link: it opens offline.
"""

from __future__ import annotations

import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnistops import processes, record
from mnistops.errors import ConfigError
from mnistops.tracking import store

CHECKED = "NBVAL_CHECK_OUTPUT"


@dataclass
class NotebookDiff:
    """One notebook's differences between the two batches."""

    name: str
    changed_cells: int  # cells whose source or outputs differ, added or removed
    checked_changed: list[int] = field(default_factory=list)  # checked cells whose outputs differ
    text: str = ""  # nbdime's rendering of the differences ("" when none)
    missing: str = ""  # "a" or "b": the batch without an executed copy


@dataclass
class BatchDiff:
    """Two batches, and what differs between them."""

    a: str
    b: str
    parameters: dict[str, tuple[str | None, str | None]]
    metrics: dict[str, tuple[float | None, float | None]]
    notebooks: list[NotebookDiff]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``--json``)."""
        from dataclasses import asdict

        return asdict(self)


def diff_batches(uri: str, ref_a: str, ref_b: str) -> BatchDiff:
    """Compare batch runs ``ref_a`` and ``ref_b`` (ids or unique prefixes)."""
    a, b = (_batch(uri, ref) for ref in (ref_a, ref_b))
    params = _changed(a.data.params, b.data.params)
    metrics = _changed(_metrics(uri, a), _metrics(uri, b))
    names = _names(a) + [n for n in _names(b) if n not in _names(a)]
    with processes.temporary_directory("diff") as tmp:
        notebooks = [_notebook(uri, a.info.run_id, b.info.run_id, name, Path(tmp)) for name in names]
    return BatchDiff(a.info.run_id, b.info.run_id, params, metrics, notebooks)


def _batch(uri: str, ref: str) -> Any:
    run = store.find_run(uri, ref)
    if run.data.tags.get(record.RUN_TYPE) != "notebook_batch":
        raise ConfigError(f"{ref}: that run is not a notebook batch: see mnistops runs list")
    return run


def _names(run: Any) -> list[str]:
    return [n for n in run.data.tags.get(record.NOTEBOOKS, "").split(",") if n]


def _changed(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _metrics(uri: str, run: Any) -> dict[str, float]:
    """The batch's metrics (no timings) and its training run's headline metrics."""
    from mnistops.tracking.runs import is_timing

    out = {k: v for k, v in run.data.metrics.items() if not is_timing(k)}
    training = run.data.tags.get(record.TRAINING_RUN_ID)
    if training:
        got = store.client(uri).get_run(training).data.metrics
        out.update({k: got[k] for k in record.HEADLINE if k in got})
    return out


def _notebook(uri: str, a: str, b: str, name: str, tmp: Path) -> NotebookDiff:
    import nbformat
    from nbdime import diff_notebooks
    from nbdime.diffing.notebooks import set_notebook_diff_ignores, set_notebook_diff_targets
    from nbdime.prettyprint import PrettyPrintConfig, pretty_print_diff

    copies = [_download(uri, run, name, tmp / side) for run, side in ((a, "a"), (b, "b"))]
    if copies[0] is None or copies[1] is None:
        return NotebookDiff(name, 0, missing="a" if copies[0] is None else "b")
    nb_a, nb_b = (nbformat.read(str(p), as_version=4) for p in copies)
    set_notebook_diff_targets(sources=True, outputs=True, attachments=False, metadata=False, identifier=False)
    set_notebook_diff_ignores({"/cells/*/id": True})  # papermill gives its injected cell a new id each run
    diff = diff_notebooks(nb_a, nb_b)
    out = io.StringIO()
    pretty_print_diff(nb_a, diff, "", PrettyPrintConfig(out=out, use_git=False, use_diff=False, use_color=False))
    changed = sum(1 for d in diff if d.key == "cells" for _ in d.diff)
    return NotebookDiff(name, changed, _checked_changed(nb_a, nb_b), out.getvalue())


def _download(uri: str, run_id: str, name: str, folder: Path) -> Path | None:
    import mlflow.artifacts

    try:
        return Path(
            mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=f"notebooks/{name}.ipynb", dst_path=str(folder), tracking_uri=uri
            )
        )
    except Exception:
        return None


def _checked_changed(nb_a: Any, nb_b: Any) -> list[int]:
    """Execution counts (as ``In [n]`` shows them, in A) of checked cells whose outputs differ."""

    def checked(nb: Any) -> list[Any]:
        return [c for c in nb.cells if c.cell_type == "code" and CHECKED in c.source]

    def text(cell: Any) -> str:
        return json.dumps([o.get("text") or o.get("data", {}).get("text/plain") for o in cell.get("outputs", [])])

    return [
        int(ca.get("execution_count") or 0)
        for ca, cb in zip(checked(nb_a), checked(nb_b), strict=False)
        if text(ca) != text(cb)
    ]


def write_html(d: BatchDiff, path: Path) -> Path:
    """The comparison as one HTML page (no script, no link: it opens offline), written whole."""
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(k)}</td><td>{esc(str(a))}</td><td>{esc(str(b))}</td></tr>" for k, (a, b) in d.parameters.items()
    )
    mrows = "".join(
        f"<tr><td>{esc(k)}</td><td>{num(a)}</td><td>{num(b)}</td><td>{delta(a, b)}</td></tr>"
        for k, (a, b) in d.metrics.items()
    )
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>notebook batches {esc(d.a[:12])} and {esc(d.b[:12])}</title>",
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 10px;text-align:left}"
        "pre{background:#f6f6f6;padding:1em;overflow-x:auto}</style></head><body>",
        f"<h1>Notebook batch {esc(d.a)} &rarr; {esc(d.b)}</h1>",
        f"<h2>Parameters ({len(d.parameters)} changed)</h2>",
        f"<table><tr><th>name</th><th>A</th><th>B</th></tr>{rows}</table>",
        f"<h2>Metrics ({len(d.metrics)} changed)</h2>",
        f"<table><tr><th>metric</th><th>A</th><th>B</th><th>B - A</th></tr>{mrows}</table>",
        "<h2>Notebooks</h2>",
    ]
    for nb in d.notebooks:
        what = f"only in {'B' if nb.missing == 'a' else 'A'}" if nb.missing else f"{nb.changed_cells} cells changed"
        checked = f"; checked outputs changed in cells {nb.checked_changed}" if nb.checked_changed else ""
        parts.append(f"<h3>{esc(nb.name)}: {esc(what)}{esc(checked)}</h3>")
        if nb.text:
            parts.append(f"<pre>{esc(nb.text)}</pre>")
    parts.append("</body></html>")
    part = path.with_name(f".{path.name}.part")
    part.write_text("".join(parts), encoding="utf-8")
    part.replace(path)
    return path


def num(v: float | None) -> str:
    """A metric as the page and the terminal show it."""
    return "" if v is None else f"{v:.6g}"


def delta(a: float | None, b: float | None) -> str:
    """B - A, signed."""
    return "" if a is None or b is None else f"{b - a:+.6g}"
