"""Fingerprints: SHA-256 digests that name data and splits independently of any library.

The notebook hashed ``pandas.util.hash_pandas_object`` output with MD5, which pandas does not
promise to keep stable. These digests are over raw little-endian bytes plus a small JSON
header (shapes, dtypes, format version), so they change only when the data does.

Construction (a two-level hash tree, so that both cores hash at once and a 55 MB dataset is
fingerprinted in half the time): each array, in key order, is cut into 8 MiB blocks of its
bytes; each block is hashed with SHA-256; the fingerprint is the SHA-256 of the JSON header
followed by the block digests in order. Block size, not thread count, fixes the result.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

FORMAT_VERSION = "mnistops-dataset/1"
SPLIT_FORMAT_VERSION = "mnistops-split/1"


def _header(kind: str, arrays: dict[str, np.ndarray]) -> bytes:
    spec = {
        "format": kind,
        "arrays": {k: {"shape": list(a.shape), "dtype": a.dtype.str} for k, a in arrays.items()},
    }
    return json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()


BLOCK = 8 << 20  # 8 MiB leaves


def _block_digest(block: np.ndarray) -> bytes:
    return hashlib.sha256(block.data).digest()  # hashlib releases the GIL on large buffers


def _digest(kind: str, arrays: dict[str, np.ndarray]) -> str:
    blocks = []
    for key in sorted(arrays):
        flat = np.ascontiguousarray(arrays[key]).view(np.uint8).reshape(-1)
        blocks += [flat[i : i + BLOCK] for i in range(0, max(len(flat), 1), BLOCK)]
    if len(blocks) > 2:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            leaves = list(pool.map(_block_digest, blocks))
    else:
        leaves = [_block_digest(b) for b in blocks]
    return hashlib.sha256(_header(kind, arrays) + b"".join(leaves)).hexdigest()


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
