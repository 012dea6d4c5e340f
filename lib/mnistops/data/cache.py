"""The local dataset cache: where it lives, atomic writes, a lock, and verified reads.

One dataset is one uncompressed ``.npz`` file holding ``images``, ``labels``, ``is_train`` and
a ``meta`` JSON string (fingerprint, source, class names). A read recomputes the fingerprint
and compares it with ``meta`` (and with a pinned value for MNIST), so a truncated or altered
file is caught, removed with a warning, and fetched again. Writes go to a temporary file in
the same folder and are renamed into place under a file lock, so two processes fetching at
once both end with one good file and nobody ever sees a half-written one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mnistops.data.dataset import Dataset
from mnistops.data.fingerprint import data_fingerprint

log = logging.getLogger(__name__)

CACHE_FORMAT = "mnistops-cache/1"


def cache_dir() -> Path:
    """The cache root: ``$MNISTOPS_CACHE_DIR``, else ``$XDG_CACHE_HOME/mnistops``, else
    ``~/.cache/mnistops``."""
    if env := os.environ.get("MNISTOPS_CACHE_DIR"):
        return Path(env).expanduser()
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg).expanduser() / "mnistops"
    return Path.home() / ".cache" / "mnistops"


def dataset_path(name: str) -> Path:
    """Path of the cache file for dataset ``name``."""
    return cache_dir() / "datasets" / f"{name}.npz"


@contextlib.contextmanager
def locked(name: str, timeout: float = 600.0) -> Iterator[None]:
    """Hold the cache's file lock for ``name`` (blocks other processes fetching it)."""
    from filelock import FileLock

    path = dataset_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_suffix(".lock")), timeout=timeout):
        yield


@contextlib.contextmanager
def atomic_path(final: Path, make_parents: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it over ``final`` only on success.

    On any exception the temporary file is removed, so no partial file is ever left. The folder
    is created if missing unless ``make_parents`` is False (a user's path: not our folder to make).
    """
    import tempfile

    if make_parents:
        final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        tmp_path.chmod(0o644)  # mkstemp makes 0600; the cache may be shared by a team
        os.replace(tmp_path, final)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_dataset(ds: Dataset) -> Path:
    """Write ``ds`` to its cache file atomically; return the path."""
    path = dataset_path(ds.name)
    meta = {
        "format": CACHE_FORMAT,
        "name": ds.name,
        "fingerprint": ds.fingerprint or data_fingerprint(ds.images, ds.labels, ds.is_train),
        "source": ds.source,
        "class_names": list(ds.class_names),
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            images=ds.images,
            labels=ds.labels,
            is_train=ds.is_train,
            meta=np.array(json.dumps(meta)),
        )
    return path


def read_dataset(name: str, expected_fingerprint: str | None = None) -> Dataset | None:
    """Read dataset ``name`` from the cache, verified; None when absent or unusable.

    A file that cannot be read, or whose content does not match its recorded (or the
    ``expected``) fingerprint, is removed with a warning so that the caller fetches again.
    """
    path = dataset_path(name)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            labels, is_train = z["labels"], z["is_train"]
            images = _read_stored(path, "images")
            if images is None:
                images = z["images"]
    except (OSError, ValueError, KeyError, struct.error, zipfile.BadZipFile, EOFError) as exc:
        _discard(path, f"cannot be read ({type(exc).__name__}: {exc})")
        return None
    fingerprint = data_fingerprint(images, labels, is_train)
    want = expected_fingerprint or meta.get("fingerprint")
    if fingerprint != want:
        _discard(path, f"has fingerprint {fingerprint[:12]}…, expected {str(want)[:12]}…")
        return None
    return Dataset(
        name=name,
        images=images,
        labels=labels,
        is_train=is_train,
        class_names=tuple(meta["class_names"]),
        source=meta.get("source", "cache"),
        cache_path=str(path),
        fingerprint=fingerprint,
        from_cache=True,
    )


def _read_stored(path: Path, name: str) -> np.ndarray | None:
    """Read an uncompressed (stored) ``.npz`` member with one ``fromfile`` call.

    ``np.load`` streams a member through ``zipfile`` in small chunks with a CRC; here the
    member's data offset is found from its local header (APPNOTE 4.3.7) and numpy reads the
    ``.npy`` straight from the file. Integrity is checked by the fingerprint, not the CRC.
    None when the member is compressed (the caller then reads it the ordinary way).
    """
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(f"{name}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            raise ValueError(f"bad zip local header for {name}")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        array = np.lib.format.read_array(f, allow_pickle=False)
    if array.nbytes + 128 < info.file_size - 4096:  # a short read means a truncated file
        raise ValueError(f"{name} is truncated")
    return array


def _discard(path: Path, why: str) -> None:
    log.warning("cache file %s %s: removing it and fetching again", path, why)
    path.unlink(missing_ok=True)
