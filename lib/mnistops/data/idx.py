"""Read and write the IDX format of the original MNIST files (LeCun et al.).

An IDX file is a 4-byte magic (two zero bytes, a type code, the number of dimensions), one
big-endian ``uint32`` per dimension, then the data in C order. MNIST uses type ``0x08``
(unsigned byte) only.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from mnistops.errors import DataError

_UBYTE = 0x08


def parse_idx(raw: bytes, where: str = "IDX data") -> np.ndarray:
    """Parse IDX bytes into a ``uint8`` array of the dimensions the header states."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{where} is not an IDX file (bad magic number): give MNIST-style IDX files")
    if raw[2] != _UBYTE:
        raise DataError(f"{where} holds IDX type 0x{raw[2]:02x}; only unsigned bytes (0x08) are supported")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{where} is truncated inside its header: fetch or copy it again")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(
            f"{where} holds {len(raw) - header} data bytes but its header {tuple(dims)} says "
            f"{expected}: the file is truncated or corrupt, fetch or copy it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def to_idx(array: np.ndarray) -> bytes:
    """Serialise a ``uint8`` array as IDX bytes."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, _UBYTE, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def read_idx_file(path: Path) -> np.ndarray:
    """Read an IDX file, gzipped (``.gz``) or not."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}; check the file is complete") from exc
    return parse_idx(raw, str(path))
