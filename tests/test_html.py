"""Executed notebooks as HTML that needs no network."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

from mnistops.runner.html import render

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def test_the_page_fetches_nothing_and_carries_its_images(tmp_path: Path) -> None:
    page = render(NOTEBOOKS / "01_explore.ipynb", tmp_path / "01_explore.html")
    html = page.read_text()
    assert "<script src" not in html and "<link" not in html.replace('<link rel="icon"', "")
    remote = re.findall(r"""(?:src|href)\s*=\s*["'](?:https?:)?//[^"']+""", html)
    assert remote == []
    assert re.findall(r"@import|url\((?!data:)", html) == []
    pngs = len(re.findall(r'<img[^>]+src="data:image/png;base64,', html))
    nb = nbformat.read(NOTEBOOKS / "01_explore.ipynb", as_version=4)
    assert pngs == sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert pngs >= 5 and "<title>01_explore</title>" in html
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically
