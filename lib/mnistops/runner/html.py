"""Executed notebooks as HTML pages that open offline.

nbconvert's ``lab`` template, through a template of ours (``templates/offline``) that drops
what the page would otherwise fetch from CDNs: require.js, MathJax, Mermaid and the widget
manager. Its CSS is inline and its images are ``data:`` URIs already, so the page renders with
no network at all (MLflow's UI previews it; a browser test opens it with the network cut).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).resolve().parent / "templates"


@functools.cache
def _exporter() -> Any:
    import logging

    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="offline", extra_template_basedirs=[str(TEMPLATES)])
    # It warns of every image without alt text; plots in a notebook output have none.
    exporter.log.setLevel(logging.ERROR)
    return exporter


def render(notebook: Path, html: Path) -> Path:
    """Write ``notebook`` (an executed ``.ipynb``) as a standalone page to ``html``, atomically."""
    import nbformat

    from mnistops.data.cache import atomic_path

    nb = nbformat.read(notebook, as_version=4)
    body, _ = _exporter().from_notebook_node(nb, resources={"metadata": {"name": notebook.stem}})
    with atomic_path(html) as tmp:
        tmp.write_text(body, encoding="utf-8")
    return html


def warm_up() -> None:
    """Import nbconvert and build the exporter ahead (on a thread while a notebook runs)."""
    _exporter()
