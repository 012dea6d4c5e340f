"""Training data from production: feedback sets, and how they join a base dataset.

A **feedback set** is what ``mnistops data from-log`` writes: logged inputs of the served model
with the true labels that came back through ``POST /feedback`` (``-1`` where none did), each with
its prediction id, and the window it was taken from. It is one ``.npz`` of numbers only
(``images``; ``labels``; ``prediction_ids``, 16 bytes each; ``meta``, UTF-8 JSON), named by a
fingerprint of its images and labels.

A config's ``data.extra`` lists feedback sets to train on beside the base dataset. Their labeled
images are appended to the base's rows as **training rows only**: the base is split exactly as
without them, so the held-out rows, and a gate's comparison with a champion trained on the base
alone, stay the same. The joined dataset has a fingerprint of its own, made from its parents'
(:func:`joined_fingerprint`), and names them in :attr:`Dataset.parents`, which the run records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnistops.config import DataConfig
from mnistops.data import cache, sources
from mnistops.data.arrays import read_arrays
from mnistops.data.dataset import Dataset
from mnistops.data.fingerprint import data_fingerprint
from mnistops.errors import DataError
from mnistops.progress import Reporter

FORMAT = "mnistops-feedback/1"
NAMES = ("images", "labels", "prediction_ids", "meta")
MAX_IMAGES = 2_000_000


@dataclass(frozen=True)
class FeedbackSet:
    """Logged inputs with their true labels (``-1``: none came back) and prediction ids.

    Attributes:
        images: ``uint8 (n, 28, 28)``.
        labels: ``int64 (n,)``, 0..9 or -1.
        prediction_ids: the server's id of each prediction.
        meta: where it came from: the log, the window, the model versions, when it was made.
        fingerprint: SHA-256 of the images and labels (:func:`set_fingerprint`).
    """

    images: np.ndarray
    labels: np.ndarray
    prediction_ids: np.ndarray
    meta: dict[str, Any]
    fingerprint: str

    @property
    def labeled(self) -> np.ndarray:
        """Row indices of the inputs whose true label is known."""
        return np.flatnonzero(self.labels >= 0)


def set_fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """The fingerprint of a feedback set: over its images and labels (unknown labels as 255)."""
    return data_fingerprint(images, labels.astype(np.int64) & 0xFF, np.ones(len(labels), bool))


def write(
    path: Path, images: np.ndarray, labels: np.ndarray, prediction_ids: np.ndarray, meta: dict[str, Any]
) -> dict[str, Any]:
    """Write a feedback set to ``path`` (``.npz``) whole or not at all; return its meta record as
    written (``meta`` with the format, the fingerprint and the count).

    Raises:
        DataError: the folder does not exist (it is not created) or cannot be written.
    """
    if path.suffix != ".npz":
        raise DataError(f"{path} does not end in .npz: name the feedback set OUT.npz")
    if not path.parent.is_dir():
        raise DataError(f"cannot write {path}: folder {path.parent} does not exist; create it, or choose another path")
    fingerprint = set_fingerprint(images, labels)
    meta = {"format": FORMAT, **meta, "fingerprint": fingerprint, "n": len(labels)}
    try:
        with cache.atomic_path(path, make_parents=False) as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                images=images.astype(np.uint8),
                labels=labels.astype(np.int64),
                prediction_ids=_ids_to_bytes(prediction_ids),
                meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8),
            )
    except OSError as exc:
        raise DataError(f"cannot write {path}: {exc.strerror or exc}; choose a folder you can write to") from None
    return meta


def read(path: Path) -> FeedbackSet:
    """Read a feedback set, checked: its arrays agree in length, its labels are -1..9, and its
    fingerprint is the one it was written with.

    Raises:
        DataError: one line naming the file and what is wrong with it.
    """

    def missing(absent: list[str], there: list[str]) -> str:
        return f"{path} is not a feedback set of mnistops data from-log (it has no {', '.join(absent)})"

    arrays = read_arrays(path, list(NAMES), MAX_IMAGES, "feedback set", missing)
    images, labels, ids = arrays["images"], arrays["labels"], arrays["prediction_ids"]
    try:
        meta = json.loads(arrays["meta"].astype(np.uint8).tobytes())
        ids = np.array([row.tobytes().hex() if row.any() else "" for row in ids.astype(np.uint8)], dtype=str)
    except ValueError:
        raise DataError(f"{path} has an unreadable meta record: write it again with mnistops data from-log") from None
    if images.dtype != np.uint8 or images.shape[1:] != (28, 28) or not len(images) == len(labels) == len(ids):
        raise DataError(
            f"{path} holds {images.shape} {images.dtype} images for {len(labels)} labels: not a feedback set"
        )
    if len(labels) and (labels.min() < -1 or labels.max() > 9):
        raise DataError(f"{path} has labels outside -1..9: not a feedback set of mnistops data from-log")
    fingerprint = set_fingerprint(images, labels)
    if meta.get("fingerprint") != fingerprint:
        raise DataError(f"{path} was changed after it was written (fingerprint {fingerprint[:12]}): build it again")
    return FeedbackSet(images, labels.astype(np.int64), ids, meta, fingerprint)


def load(data: DataConfig, progress: Reporter | None = None) -> Dataset:
    """The dataset a config trains on: ``data.dataset``, joined by the feedback sets of ``data.extra``."""
    return join(sources.load(data.dataset, source=data.source, progress=progress), data.extra, data.extra_weight)


def _ids_to_bytes(ids: np.ndarray) -> np.ndarray:
    """Prediction ids (32 hex digits, or '' where the log had none) as ``uint8 (n, 16)``: an
    ``.npz`` of numbers only, which is read without pickle (:mod:`mnistops.data.arrays`)."""
    out = np.zeros((len(ids), 16), dtype=np.uint8)
    for i, pid in enumerate(ids):
        if pid:
            out[i] = np.frombuffer(bytes.fromhex(str(pid)), dtype=np.uint8)
    return out


def joined_fingerprint(base: str, extras: list[str], weight: int = 1) -> str:
    """The fingerprint of a base dataset joined by feedback sets, from theirs, in order, and the weight."""
    return hashlib.sha256(json.dumps({"base": base, "extra": extras, "weight": weight}).encode()).hexdigest()


def join(ds: Dataset, paths: list[str], weight: int = 1) -> Dataset:
    """``ds`` with the labeled images of the feedback sets at ``paths`` appended as training rows,
    each ``weight`` times (a few hundred production inputs beside 56,000 base images teach a
    forest little unless they count more).

    Raises:
        DataError: a path is not a readable feedback set, or it holds no labeled image.
    """
    if not paths:
        return ds
    sets = [read(Path(p)) for p in paths]
    for path, fb in zip(paths, sets, strict=True):
        if not len(fb.labeled):
            raise DataError(f"data.extra {path} holds no labeled image: label predictions through POST /feedback first")
    images = [ds.images, *(np.repeat(fb.images[fb.labeled], weight, axis=0) for fb in sets)]
    labels = [ds.labels, *(np.repeat(fb.labels[fb.labeled].astype(np.uint8), weight) for fb in sets)]
    n_extra = sum(len(fb.labeled) for fb in sets) * weight
    parents = {
        "base": ds.fingerprint,
        "weight": weight,
        "extra": [
            {"path": str(Path(p).resolve()), "fingerprint": fb.fingerprint, "n": len(fb.labeled), **_window(fb.meta)}
            for p, fb in zip(paths, sets, strict=True)
        ],
    }
    return dataclasses.replace(
        ds,
        name=f"{ds.name}+feedback",
        images=np.concatenate(images),
        labels=np.concatenate(labels),
        is_train=np.concatenate([ds.is_train, np.ones(n_extra, bool)]),
        fingerprint=joined_fingerprint(ds.fingerprint, [fb.fingerprint for fb in sets], weight),
        n_extra=n_extra,
        parents=json.dumps(parents, sort_keys=True),
    )


def _window(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: meta[k] for k in ("log", "from", "until", "since") if k in meta}


def base_fingerprint(ds: Dataset) -> str:
    """The fingerprint of the data ``ds`` was built on: its own, or its base's when joined."""
    return json.loads(ds.parents)["base"] if ds.parents else ds.fingerprint


def labeled_ids(paths: list[str]) -> list[str]:
    """The prediction ids of the labeled images that :func:`join` takes from ``paths``, in order."""
    ids: list[str] = []
    for path in paths:
        fb = read(Path(path))
        ids += [str(i) for i in fb.prediction_ids[fb.labeled]]
    return ids
