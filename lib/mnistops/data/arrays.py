"""A user's ``.npz`` or ``.npy`` file, checked before it is trusted.

``np.load`` believes what a file says about itself: a 762 KB ``.npz`` whose header declares a
million images inflates to 784 MB, one that declares ``(10**9, 28, 28)`` raises ``MemoryError``, a
truncated one fails deep inside ``zipfile``. :func:`read_arrays` reads each member's ``.npy``
header first (shape and dtype, a few hundred bytes) and refuses, with one line, an array larger
than the caller allows, one that needs pickle, a member that is missing, and any file that is not
what its name says (a folder, a plain ``.npy`` where an archive is expected, a truncated or
foreign file), before anything is inflated.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from mnistops.errors import DataError

ZIP_MAGIC, NPY_MAGIC = b"PK\x03\x04", b"\x93NUMPY"
# What reading a damaged file can raise, from zipfile, zlib and numpy's format reader.
_DAMAGED = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error, KeyError)


def read_arrays(
    path: Path,
    names: Sequence[str],
    max_items: int,
    what: str = "file",
    missing: Callable[[list[str], list[str]], str] | None = None,
) -> dict[str, np.ndarray]:
    """The arrays ``names`` of the ``.npz`` at ``path`` (a plain ``.npy`` is the array of the
    first name), each refused before it is read if it holds more than ``max_items`` items along its
    first axis, or needs pickle.

    Args:
        path: the user's file.
        names: the arrays to read.
        max_items: the most rows (images, labels) one array may hold.
        what: what the file is, for messages ("batch file", "dataset").
        missing: the message when arrays are missing, from (the missing names, the names there).

    Raises:
        DataError: one line naming the file and what is wrong with it.
    """
    if not path.exists():
        raise DataError(f"no {what} at {path}")
    if not path.is_file():
        raise DataError(f"{path} is not a file: give the {what} as an .npz file")
    with path.open("rb") as f:
        magic = f.read(6)
    if magic.startswith(NPY_MAGIC):
        with path.open("rb") as f:
            return {names[0]: _read_npy(f, path, names[0], max_items)}
    if not magic.startswith(ZIP_MAGIC):
        raise DataError(f"{path} is not a readable .npz file (it starts {magic!r}): give the {what} as an .npz file")
    try:
        with zipfile.ZipFile(path) as z:
            members = {n.removesuffix(".npy"): n for n in z.namelist()}
            absent = [n for n in names if n not in members]
            if absent:
                raise DataError(
                    missing(absent, sorted(members))
                    if missing
                    else f"{path} holds {sorted(members)}, no {', '.join(repr(m) for m in absent)} array: "
                    f"save the {what} as {', '.join(f'{n}=...' for n in names)}"
                )
            out = {}
            for name in names:
                with z.open(members[name]) as f:
                    out[name] = _read_npy(f, path, name, max_items)
            return out
    except DataError:
        raise
    except _DAMAGED as exc:
        raise DataError(f"{path} is not a readable .npz file (truncated or damaged: {exc})") from None


def _read_npy(f: IO[bytes], path: Path, name: str, max_items: int) -> np.ndarray:
    """One ``.npy`` stream: its header checked, then its data read (exactly what the header says)."""
    try:
        version = np.lib.format.read_magic(f)
        shape, fortran, dtype = _header(f, version)
    except _DAMAGED as exc:
        raise DataError(f"{path}: array {name!r} has no readable .npy header ({exc})") from None
    if dtype.hasobject:
        raise DataError(f"{path}: array {name!r} holds Python objects, which need pickle: save plain numbers")
    if dtype.kind not in "biuf":
        raise DataError(f"{path}: array {name!r} holds {dtype} values: save numbers")
    rows = shape[0] if shape else 1
    if rows > max_items:
        raise DataError(f"{path}: array {name!r} declares {rows:,} rows; at most {max_items:,} are read")
    if int(np.prod(shape, dtype=np.float64)) * dtype.itemsize > max_items * 784 * 8:
        raise DataError(f"{path}: array {name!r} declares shape {list(shape)}: too large for {max_items:,} images")
    data = bytearray(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    view, got = memoryview(data), 0
    try:
        while got < len(data):
            n = f.readinto(view[got:])  # type: ignore[attr-defined]
            if not n:
                break
            got += n
    except _DAMAGED as exc:
        raise DataError(f"{path}: array {name!r} could not be read (truncated or damaged: {exc})") from None
    if got < len(data):
        raise DataError(f"{path}: array {name!r} is truncated: {got:,} of its {len(data):,} bytes are there")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _header(f: IO[bytes], version: tuple[int, int]) -> Any:
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f".npy format version {version} is not one numpy writes")
