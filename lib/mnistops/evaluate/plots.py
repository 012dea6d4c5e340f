"""Figures for a run: the confusion matrix and the most confident mistakes (PNG files).

Drawn with matplotlib's object API on the Agg canvas (no pyplot: no global state, no
window, safe off the main thread, and a third of a second less to import).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mnistops.figures import new_figure as _figure


def confusion_matrix_png(confusion: list[list[int]], class_names: tuple[str, ...], path: Path) -> Path:
    """Draw :func:`confusion_matrix_figure` to ``path``."""
    fig = confusion_matrix_figure(confusion, class_names)
    fig.savefig(path)
    return path


def confusion_matrix_figure(confusion: list[list[int]], class_names: tuple[str, ...]) -> Any:
    """The confusion matrix (rows: true class, columns: predicted).

    Each cell shows its count; its colour is the cell's share of its row (the true class) on a
    log scale, so that 3 confusions in 1,400 are as visible as they matter: on a linear scale
    of counts every off-diagonal cell looks white next to the diagonal.
    """
    from matplotlib.colors import LogNorm

    cm = np.asarray(confusion)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig = _figure(7.5, 6.2)
    ax = fig.add_subplot()
    floor = 1e-4  # an empty cell sits at the bottom of the scale
    im = ax.imshow(np.maximum(share, floor), cmap="magma_r", norm=LogNorm(vmin=floor, vmax=1.0))
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax.text(
                    j,
                    i,
                    str(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if share[i, j] > 0.03 else "black",
                )
    bar = fig.colorbar(im, ax=ax)
    bar.set_label("share of the true class (log scale)")
    ax.set_title(f"confusion matrix (accuracy {np.trace(cm) / max(cm.sum(), 1):.4f})")
    # Fixed margins that fit ten class names (Fashion-MNIST's longest too): tight_layout
    # would draw the figure once more to measure them, doubling the time this plot takes.
    fig.subplots_adjust(left=0.16, right=0.98, bottom=0.16, top=0.94)
    return fig


def mistakes_png(
    images: np.ndarray,
    y_true: np.ndarray,
    proba: np.ndarray,
    rows: np.ndarray,
    class_names: tuple[str, ...],
    path: Path,
    cols: int = 8,
) -> Path:
    """Draw :func:`mistakes_figure` to ``path``."""
    fig = mistakes_figure(images, y_true, proba, rows, class_names, cols)
    fig.savefig(path)
    return path


def mistakes_figure(
    images: np.ndarray,
    y_true: np.ndarray,
    proba: np.ndarray,
    rows: np.ndarray,
    class_names: tuple[str, ...],
    cols: int = 8,
) -> Any:
    """Images ``uint8 (n, 28, 28)`` at ``rows`` as one mosaic, each captioned ``true→predicted``
    over its confidence."""
    n = max(len(rows), 1)
    cols = min(cols, n)
    nrows = -(-n // cols)
    cell = 28 + 22  # image plus a band for its two-line caption
    mosaic = np.full((nrows * cell, cols * 30), 0, dtype=np.uint8)
    fig = _figure(1.5 * cols, 1.5 * nrows * cell / 30 + 0.5)
    ax = fig.add_axes((0, 0, 1, 0.93))
    ax.axis("off")
    for k, r in enumerate(rows):
        y0, x0 = (k // cols) * cell + 22, (k % cols) * 30 + 1
        mosaic[y0 : y0 + 28, x0 : x0 + 28] = images[r]
    ax.imshow(mosaic, cmap="gray_r", interpolation="nearest")
    for k, r in enumerate(rows):
        pred = int(proba[r].argmax())
        ax.text(
            (k % cols) * 30 + 15,
            (k // cols) * cell + 11,
            f"{class_names[int(y_true[r])]}→{class_names[pred]}\n{proba[r, pred]:.2f}",
            ha="center",
            va="center",
            fontsize=9,
            color="crimson",
            linespacing=1.2,
        )
    fig.suptitle("most confident mistakes (true→predicted, confidence)", fontsize=11)
    return fig


def learning_curve_figure(curve: Any) -> Any:
    """A run's learning curve (a :func:`mnistops.tracking.runs.learning_curve` frame): accuracy
    on held-out rows as the model grew, and the training loss where one is logged."""
    fig = _figure(7, 3.6)
    ax = fig.add_subplot()
    for name in ("held_out_accuracy", "val_accuracy"):
        if name in curve:
            ax.plot(curve.index, curve[name], marker="o", ms=3, label=name.replace("_", " "))
    ax.set_xlabel(curve.index.name)
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    if "train_loss" in curve:
        loss = ax.twinx()
        loss.plot(curve.index, curve["train_loss"], color="tab:red", ls="--", label="train loss")
        loss.set_ylabel("train loss")
        loss.legend(loc="center right", fontsize=8)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("learning curve", fontsize=10)
    fig.subplots_adjust(left=0.11, right=0.89 if "train_loss" in curve else 0.97, top=0.91, bottom=0.14)
    return fig
