"""Splits: the notebook's stratified split exactly, the official one, and their fingerprints."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from mnistops.data.dataset import Dataset
from mnistops.data.split import make_split
from mnistops.errors import ConfigError


def test_stratified_split_is_the_notebooks_rows(mnist: Dataset) -> None:
    split = make_split(mnist, "stratified", 0.2, 42)
    # The notebook split a DataFrame of the 70,000 rows; its index says which rows went where.
    frame = pd.DataFrame({"pixel": mnist.images[:, 14, 14]})
    x_train, x_test, _, _ = train_test_split(frame, mnist.labels, test_size=0.2, random_state=42, stratify=mnist.labels)
    np.testing.assert_array_equal(split.train, x_train.index.to_numpy())
    np.testing.assert_array_equal(split.test, x_test.index.to_numpy())
    assert (len(split.train), len(split.test)) == (56_000, 14_000)
    counts = np.bincount(mnist.labels[split.test], minlength=10) / 14_000
    np.testing.assert_allclose(counts, np.bincount(mnist.labels) / 70_000, atol=1e-4)


def test_official_split_and_fingerprints(mnist: Dataset) -> None:
    official = make_split(mnist, "official")
    assert (len(official.train), len(official.test)) == (60_000, 10_000)
    a = make_split(mnist, "stratified", 0.2, 42)
    assert a.fingerprint == make_split(mnist, "stratified", 0.2, 42).fingerprint
    assert (
        len(
            {
                a.fingerprint,
                official.fingerprint,
                make_split(mnist, "stratified", 0.2, 43).fingerprint,
                make_split(mnist, "stratified", 0.25, 42).fingerprint,
            }
        )
        == 4
    )


def test_bad_split_arguments(mnist: Dataset) -> None:
    with pytest.raises(ConfigError, match=r"split\.test_size is 1\.5; expected a fraction"):
        make_split(mnist, "stratified", 1.5)
    with pytest.raises(ConfigError, match="unknown split strategy 'random'"):
        make_split(mnist, "random")
