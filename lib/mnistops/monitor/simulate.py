"""Shifted batches made from held-out images, for demos and for testing the checks.

``none`` (clean), ``rotate``, ``noise``, ``blur``, ``invert``, ``thicken``, ``scale``,
``label-skew`` (class proportions change) and ``fashion`` (Fashion-MNIST images), each at a
severity ``mild``, ``moderate`` or ``severe``. scipy.ndimage does the image work; every random
choice takes ``seed``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mnistops.errors import ConfigError

KINDS = ("none", "rotate", "noise", "blur", "invert", "thicken", "scale", "label-skew", "fashion")
SEVERITIES = ("mild", "moderate", "severe")
# Per kind: the strength at mild, moderate, severe.
STRENGTH: dict[str, tuple[float, float, float]] = {
    "rotate": (10.0, 25.0, 45.0),  # degrees, either way
    "noise": (20.0, 50.0, 90.0),  # standard deviation of added Gaussian noise (0..255)
    "blur": (0.6, 1.0, 1.6),  # Gaussian sigma, pixels
    "invert": (1.0, 1.0, 1.0),  # every image inverted
    "thicken": (1.0, 2.0, 3.0),  # grey dilation size, pixels
    "scale": (0.85, 0.7, 0.5),  # the digit shrunk to this size, centred
    "label-skew": (0.3, 0.6, 0.9),  # share of the batch drawn from three classes only
    "fashion": (1.0, 1.0, 1.0),
}


def check_kind(kind: str, severity: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"unknown shift {kind!r}: choose from {', '.join(KINDS)}")
    if severity not in SEVERITIES:
        raise ConfigError(f"unknown severity {severity!r}: choose from {', '.join(SEVERITIES)}")


def shifted(
    images: np.ndarray,
    labels: np.ndarray,
    kind: str,
    n: int,
    severity: str = "moderate",
    seed: int = 0,
    fashion: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images drawn (seeded) from ``images`` with their ``labels``, shifted by ``kind``.

    Args:
        fashion: Fashion-MNIST images, for ``kind="fashion"`` (their labels are returned as -1).
    """
    from scipy import ndimage

    check_kind(kind, severity)
    if n < 1:
        raise ConfigError(f"n is {n}: ask for at least one image")
    rng = np.random.default_rng(seed)
    s = STRENGTH.get(kind, (0.0, 0.0, 0.0))[SEVERITIES.index(severity)]
    if kind == "fashion":
        if fashion is None:
            raise ConfigError("the fashion shift needs Fashion-MNIST images")
        take = rng.choice(len(fashion), n, replace=len(fashion) < n)
        return np.asarray(fashion[take], np.uint8), np.full(n, -1, np.int64)
    if kind == "label-skew":
        few = rng.choice(10, 3, replace=False)
        n_few = round(n * s)
        pool_few = np.flatnonzero(np.isin(labels, few))
        take = np.r_[rng.choice(pool_few, n_few, replace=False), rng.choice(len(images), n - n_few, replace=False)]
        rng.shuffle(take)
    else:
        take = rng.choice(len(images), n, replace=False)
    x = np.asarray(images[take], dtype=np.float64)
    y = np.asarray(labels[take], dtype=np.int64)
    if kind == "rotate":
        angles = rng.uniform(0.8 * s, 1.2 * s, n) * rng.choice([-1, 1], n)
        x = np.stack([ndimage.rotate(img, a, reshape=False, order=1) for img, a in zip(x, angles, strict=True)])
    elif kind == "noise":
        x = x + rng.normal(0, s, x.shape)
    elif kind == "blur":
        x = np.stack([ndimage.gaussian_filter(img, s) for img in x])
    elif kind == "invert":
        x = 255 - x
    elif kind == "thicken":
        size = int(s) + 1
        x = np.stack([ndimage.grey_dilation(img, size=(size, size)) for img in x])
    elif kind == "scale":
        x = np.stack([_shrunk(img, s) for img in x])
    return np.clip(np.rint(x), 0, 255).astype(np.uint8), y


def _shrunk(img: np.ndarray, factor: float) -> np.ndarray:
    from scipy import ndimage

    small = ndimage.zoom(img, factor, order=1)
    out = np.zeros((28, 28))
    top, left = (28 - small.shape[0]) // 2, (28 - small.shape[1]) // 2
    out[top : top + small.shape[0], left : left + small.shape[1]] = small
    return out


def held_out(cfg: Any) -> tuple[np.ndarray, np.ndarray]:
    """The held-out images and labels of the split ``cfg`` describes (what shifted batches are made of)."""
    from mnistops.data import sources
    from mnistops.data.split import make_split

    ds = sources.load(cfg.data.dataset, source=cfg.data.source)
    split = make_split(ds, cfg.split.strategy, cfg.split.test_size, cfg.seed)
    return ds.images[split.test], ds.labels[split.test]


def write(path: Any, images: np.ndarray, labels: np.ndarray, kind: str, severity: str, seed: int) -> None:
    """Save a batch as ``.npz`` (``images``, ``labels``, how it was made), all at once or not at all."""
    from pathlib import Path

    out = Path(path)
    if not out.parent.is_dir():
        raise ConfigError(f"the folder {out.parent} does not exist: create it or write the batch elsewhere")
    tmp = out.with_name(out.name + ".part.npz")
    np.savez_compressed(tmp, images=images, labels=labels, shift=kind, severity=severity, seed=seed)
    tmp.replace(out)
