"""Fingerprints depend on the bytes and nothing else."""

from __future__ import annotations

import numpy as np

from mnistops.data.fingerprint import data_fingerprint, split_fingerprint


def _data(n: int = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8), np.arange(n) < 20


def test_fingerprint_changes_with_any_byte_and_only_then() -> None:
    images, labels, is_train = _data()
    base = data_fingerprint(images, labels, is_train)
    assert base == data_fingerprint(images.copy(), labels.copy(), is_train.copy())
    changed = images.copy()
    changed[3, 4, 5] ^= 1
    flipped = is_train.copy()
    flipped[0] = False
    relabelled = labels.copy()
    relabelled[0] = (relabelled[0] + 1) % 10
    others = {
        data_fingerprint(changed, labels, is_train),
        data_fingerprint(images, relabelled, is_train),
        data_fingerprint(images, labels, flipped),
    }
    assert base not in others and len(others) == 3


def test_fingerprint_sees_shape_not_just_bytes() -> None:
    images, labels, is_train = _data(28)
    flat = images.reshape(28, 784)
    assert data_fingerprint(images, labels, is_train) != data_fingerprint(flat, labels, is_train)


def test_split_fingerprint_depends_on_order() -> None:
    a, b = np.array([0, 1, 2]), np.array([3])
    assert split_fingerprint(a, b) != split_fingerprint(a[::-1], b)
    assert split_fingerprint(a, b) == split_fingerprint(a.astype(np.int32), b.astype(np.int16))
