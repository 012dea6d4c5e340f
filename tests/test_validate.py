"""Validation rules and the report every run logs."""

from __future__ import annotations

import numpy as np
import pytest

from mnistops.data.dataset import Dataset
from mnistops.data.validate import count_duplicates, validate
from mnistops.errors import ValidationError


def test_real_mnist_report(mnist: Dataset) -> None:
    report = validate(mnist)
    assert report["ok"] and report["n_samples"] == 70_000
    assert (report["pixel_min"], report["pixel_max"]) == (0, 255)
    assert report["labels"] == list(range(10)) and report["rare_classes"] == []
    assert report["duplicate_images"] == 0 and report["warnings"] == []
    assert report["splits"]["train"]["n"] == 60_000


def test_duplicates_are_counted_exactly() -> None:
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (500, 28, 28), dtype=np.uint8)
    assert count_duplicates(images) == 0
    images[10] = images[20]
    images[30] = images[20]
    images[40] = images[41]
    assert count_duplicates(images) == 3


def test_rare_class_and_duplicates_are_warnings(mnist: Dataset) -> None:
    keep = np.flatnonzero(mnist.labels != 3)[:5000]
    rows = np.concatenate([keep, np.flatnonzero(mnist.labels == 3)[:10], keep[:2]])
    ds = Dataset("tiny", mnist.images[rows], mnist.labels[rows], np.arange(len(rows)) < 4000)
    report = validate(ds)
    assert report["rare_classes"] == [3] and report["duplicate_images"] == 2
    assert report["warnings"] == [
        "classes [3] each have under 1% of rows",
        "2 images are exact duplicates of another image",
    ]


def test_missing_split_is_an_error(mnist: Dataset) -> None:
    ds = Dataset("all-train", mnist.images[:100], mnist.labels[:100], np.ones(100, bool))
    with pytest.raises(ValidationError, match="has no test rows: give both a train and a test split"):
        validate(ds)
