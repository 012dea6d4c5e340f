"""Train/test splits as row indices into a :class:`~mnistops.data.dataset.Dataset`.

* ``stratified``: the notebook's split of the 70,000-image union, stratified by label. It is
  scikit-learn's ``train_test_split`` itself, applied to row indices, so the rows are exactly
  those the notebook used for the same ``test_size`` and seed.
* ``official``: the published 60,000 / 10,000 split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mnistops.data.dataset import Dataset
from mnistops.data.fingerprint import split_fingerprint
from mnistops.errors import ConfigError

STRATEGIES = ("stratified", "official")


@dataclass(frozen=True)
class Split:
    """Row indices of one split (``int64``, in training order) and their fingerprint."""

    strategy: str
    train: np.ndarray
    test: np.ndarray
    fingerprint: str


def make_split(ds: Dataset, strategy: str = "stratified", test_size: float = 0.2, seed: int = 42) -> Split:
    """Split ``ds`` into train and test row indices.

    The production extras of a joined dataset (:mod:`mnistops.data.extras`) are not split: the
    base rows are, as they would be alone, and the extras follow the base's training rows.

    Args:
        ds: the dataset.
        strategy: ``stratified`` (over all rows) or ``official``.
        test_size: fraction of rows held out (stratified only), in (0, 1).
        seed: ``random_state`` of the shuffle (stratified only).
    """
    if strategy == "official":
        train, test = ds.official_indices()
    elif strategy == "stratified":
        if not 0.0 < test_size < 1.0:
            raise ConfigError(f"split.test_size is {test_size}; expected a fraction between 0 and 1, e.g. 0.2")
        from sklearn.model_selection import train_test_split

        train, test = train_test_split(
            np.arange(ds.n_base), test_size=test_size, random_state=seed, stratify=ds.labels[: ds.n_base]
        )
    else:
        raise ConfigError(f"unknown split strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    train = np.asarray(train, dtype=np.int64)
    test = np.asarray(test, dtype=np.int64)
    fingerprint = split_fingerprint(train, test)  # of the base rows: the same with or without extras
    extra = np.arange(ds.n_base, ds.n_samples, dtype=np.int64)
    return Split(strategy, np.concatenate([train, extra]), test, fingerprint)
