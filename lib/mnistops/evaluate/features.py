"""What an image looks like, in a few numbers a person can read: per-image features for drift checks.

Every feature is computed with numpy over a whole batch ``uint8 (n, 28, 28)`` at once:

* ``mean_intensity``: the mean pixel value (0..255);
* ``ink_fraction``: the share of pixels brighter than half (the digit's area);
* ``centroid_row``, ``centroid_col``: the centre of mass (MNIST puts it near 14, 14);
* ``height``, ``width``: of the box around the ink;
* ``stroke_width``: ink per inked row crossing (how thick the pen was);
* ``crossings``: ink/no-ink transitions per row, on average (how many strokes a row meets);
* ``edge_strength``: the mean gradient magnitude (sharp strokes or blurred ones);
* ``bright_fraction``: the share of pixels at 255 or near it (saturated ink; noise lowers it).
"""

from __future__ import annotations

import numpy as np

FEATURES = (
    "mean_intensity",
    "ink_fraction",
    "centroid_row",
    "centroid_col",
    "height",
    "width",
    "stroke_width",
    "crossings",
    "edge_strength",
    "bright_fraction",
)
INK = 128  # a pixel brighter than this is ink


def image_features(images: np.ndarray) -> np.ndarray:
    """``float64 (n, len(FEATURES))``, one row per image, in the order of :data:`FEATURES`."""
    x = np.asarray(images, dtype=np.float64).reshape(-1, 28, 28)
    n = len(x)
    ink: np.ndarray = x > INK
    total = x.sum(axis=(1, 2))
    safe = np.where(total > 0, total, 1.0)
    rows = np.arange(28, dtype=np.float64)
    centroid_row = (x.sum(axis=2) * rows).sum(axis=1) / safe
    centroid_col = (x.sum(axis=1) * rows).sum(axis=1) / safe
    any_row = np.any(ink, axis=2)
    any_col = np.any(ink, axis=1)
    height = np.where(any_row.any(axis=1), 28 - np.argmax(any_row[:, ::-1], axis=1) - np.argmax(any_row, axis=1), 0)
    width = np.where(any_col.any(axis=1), 28 - np.argmax(any_col[:, ::-1], axis=1) - np.argmax(any_col, axis=1), 0)
    starts = (ink[:, :, 1:] & ~ink[:, :, :-1]).sum(axis=2) + ink[:, :, 0]  # strokes met along each row
    crossed = starts.sum(axis=1)
    stroke_width = ink.sum(axis=(1, 2)) / np.where(crossed > 0, crossed, 1)
    crossings = crossed / np.maximum(any_row.sum(axis=1), 1)
    gy, gx = np.gradient(x, axis=(1, 2))  # type: ignore[misc]
    edge = np.hypot(gy, gx).mean(axis=(1, 2))
    out = np.column_stack(
        [
            x.mean(axis=(1, 2)),
            ink.mean(axis=(1, 2)),
            centroid_row,
            centroid_col,
            height,
            width,
            stroke_width,
            crossings,
            edge,
            (x >= 250).mean(axis=(1, 2)),
        ]
    )
    assert out.shape == (n, len(FEATURES))
    return out
