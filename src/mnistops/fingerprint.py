"""Fingerprints: SHA-256 digests that name data and splits independently of any library.

The notebook hashed ``pandas.util.hash_pandas_object`` output with MD5, which pandas does not
promise to keep stable. These digests are over raw little-endian bytes plus a small JSON
header (shapes, dtypes, format version), so they change only when the data does.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

FORMAT_VERSION = "mnistops-dataset/1"
SPLIT_FORMAT_VERSION = "mnistops-split/1"


def _header(kind: str, arrays: dict[str, np.ndarray]) -> bytes:
    spec = {
        "format": kind,
        "arrays": {k: {"shape": list(a.shape), "dtype": a.dtype.str} for k, a in arrays.items()},
    }
    return json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()


def _digest(kind: str, arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(_header(kind, arrays))
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(a.view(np.uint8).reshape(-1).data)
    return h.hexdigest()


def data_fingerprint(images: np.ndarray, labels: np.ndarray, is_train: np.ndarray) -> str:
    """SHA-256 over canonical images ``uint8 (n,28,28)``, labels ``uint8 (n,)`` and split
    membership ``bool (n,)``, plus a header of their shapes and dtypes."""
    return _digest(
        FORMAT_VERSION,
        {
            "images": images.astype(np.uint8, copy=False),
            "labels": labels.astype(np.uint8, copy=False),
            "is_train": is_train.astype(np.bool_, copy=False),
        },
    )


def split_fingerprint(train_idx: np.ndarray, test_idx: np.ndarray) -> str:
    """SHA-256 over the train and test row indices (``int64``, in the order they are used)."""
    return _digest(
        SPLIT_FORMAT_VERSION,
        {
            "train": train_idx.astype("<i8", copy=False),
            "test": test_idx.astype("<i8", copy=False),
        },
    )


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
