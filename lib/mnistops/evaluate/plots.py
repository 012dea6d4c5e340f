"""Figures for a run: the confusion matrix and the most confident mistakes (PNG files).

Drawn with matplotlib's object API on the Agg canvas (no pyplot: no global state, no
window, safe off the main thread, and a third of a second less to import).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def confusion_matrix_png(confusion: list[list[int]], class_names: tuple[str, ...], path: Path) -> Path:
    """Draw the confusion matrix (rows: true class, columns: predicted) to ``path``."""
    cm = np.asarray(confusion)
    fig = _figure(7, 6)
    ax = fig.add_subplot()
    im = ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > threshold else "black")  # fmt: skip
    fig.colorbar(im, ax=ax)
    ax.set_title(f"confusion matrix (accuracy {np.trace(cm) / max(cm.sum(), 1):.4f})")
    # Fixed margins that fit ten class names (Fashion-MNIST's longest too): tight_layout
    # would draw the figure once more to measure them, doubling the time this plot takes.
    fig.subplots_adjust(left=0.16, right=0.98, bottom=0.16, top=0.94)
    fig.savefig(path)
    return path


def mistakes_png(
    images: np.ndarray,
    y_true: np.ndarray,
    proba: np.ndarray,
    rows: np.ndarray,
    class_names: tuple[str, ...],
    path: Path,
    cols: int = 8,
) -> Path:
    """Draw images ``uint8 (n, 28, 28)`` at ``rows`` as one mosaic, each captioned
    ``true→predicted confidence``."""
    n = max(len(rows), 1)
    cols = min(cols, n)
    nrows = -(-n // cols)
    cell = 28 + 12  # image plus a band for its caption
    mosaic = np.full((nrows * cell, cols * 30), 0, dtype=np.uint8)
    fig = _figure(1.3 * cols, 1.3 * nrows * cell / 28 + 0.4)
    ax = fig.add_axes((0, 0, 1, 0.92))
    ax.axis("off")
    for k, r in enumerate(rows):
        y0, x0 = (k // cols) * cell + 12, (k % cols) * 30 + 1
        mosaic[y0 : y0 + 28, x0 : x0 + 28] = images[r]
    ax.imshow(mosaic, cmap="gray_r", interpolation="nearest")
    for k, r in enumerate(rows):
        pred = int(proba[r].argmax())
        ax.text((k % cols) * 30 + 15, (k // cols) * cell + 6,
                f"{class_names[int(y_true[r])]}→{class_names[pred]} {proba[r, pred]:.2f}",
                ha="center", va="center", fontsize=6, color="crimson")  # fmt: skip
    fig.suptitle("most confident mistakes (true→predicted, confidence)", fontsize=9)
    fig.savefig(path)
    return path
