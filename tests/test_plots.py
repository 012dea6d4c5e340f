"""The run's figures are readable: confusions stand out, captions can be read."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mnistops.data.dataset import FASHION_CLASSES, MNIST_CLASSES
from mnistops.evaluate import plots


def _luminance(rgba: np.ndarray) -> float:
    r, g, b = rgba[:3]
    return float(0.2126 * r + 0.7152 * g + 0.0722 * b)


def test_a_rare_confusion_stands_out_from_an_empty_cell(tmp_path: Path) -> None:
    cm = np.diag([1400] * 10)
    cm[4, 9] = 3  # 3 fours of 1,403 read as nines
    fig = plots.confusion_matrix_figure(cm.tolist(), MNIST_CLASSES)
    image = fig.axes[0].images[0]
    colours = image.to_rgba(image.get_array())
    empty, rare, right = _luminance(colours[0, 1]), _luminance(colours[4, 9]), _luminance(colours[0, 0])
    assert empty > 0.9  # nothing there: near white
    assert rare < empty - 0.3  # 0.2% of a class: plainly coloured, not lost in the white
    assert right < rare  # the diagonal darkest
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"1400", "3"} <= texts and "0" not in texts  # counts shown; empty cells left blank
    assert plots.confusion_matrix_png(cm.tolist(), MNIST_CLASSES, tmp_path / "cm.png").stat().st_size > 10_000


def test_mistake_captions_are_readable() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (16, 28, 28), dtype=np.uint8)
    y = np.arange(16) % 10
    proba = np.full((16, 10), 0.01)
    proba[np.arange(16), (y + 1) % 10] = 0.91
    fig = plots.mistakes_figure(images, y, proba, np.arange(16), FASHION_CLASSES)
    captions = [t for t in fig.axes[0].texts]
    assert len(captions) == 16 and min(t.get_fontsize() for t in captions) >= 8
    assert captions[0].get_text() == "T-shirt/top→Trouser\n0.91"
