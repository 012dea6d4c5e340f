"""The exploration notebook's tables and figures, on real MNIST and on planted cases."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from mnistops.data import explore
from mnistops.data.dataset import FASHION_CLASSES, Dataset
from mnistops.data.validate import duplicate_groups

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_class_balance_is_the_published_count_of_each_split(mnist: Dataset) -> None:
    table = explore.class_balance(mnist)
    assert table["train"].tolist() == TRAIN_COUNTS and table["test"].tolist() == TEST_COUNTS
    assert abs(table["train %"].sum() - 100) < 0.05 and table.loc["1", "test %"] == 11.35
    assert isinstance(explore.class_balance_figure(table), Figure)


def test_summary_names_size_split_and_fingerprint(mnist: Dataset) -> None:
    summary = explore.summary(mnist)["value"]
    assert summary["images"] == "70,000" and summary["official split"] == "train 60,000 / test 10,000"
    assert summary["fingerprint"] == mnist.fingerprint


def test_samples_are_of_their_class_and_follow_the_seed(mnist: Dataset) -> None:
    rows = explore.sample_rows(mnist, per_class=5, seed=1)
    assert rows.shape == (10, 5)
    assert all((mnist.labels[rows[c]] == c).all() for c in range(10))
    assert (rows == explore.sample_rows(mnist, 5, seed=1)).all() and (rows != explore.sample_rows(mnist, 5, 2)).any()


def test_ink_per_class_ranks_one_lightest_and_zero_heaviest(mnist: Dataset) -> None:
    ink = explore.ink_table(mnist)["inked pixels %"]
    assert ink.idxmin() == "1" and ink.idxmax() == "0"
    assert 8 < ink["1"] < 14 and 20 < ink["8"] < 25


def test_the_embedding_is_seeded_and_separates_zeros_from_ones(mnist: Dataset) -> None:
    emb = explore.embedding(mnist, n=3000, seed=0)
    assert emb.coords.shape == (3000, 2) and emb.labels.shape == (3000,)
    assert 0.05 < emb.explained[0] < 0.2 and emb.explained[1] <= emb.explained[0]
    again = explore.embedding(mnist, n=3000, seed=0)
    assert np.allclose(np.abs(emb.coords), np.abs(again.coords))
    pc1 = emb.coords[:, 0]
    zeros, ones = pc1[emb.labels == 0], pc1[emb.labels == 1]
    assert abs(np.median(zeros) - np.median(ones)) > 3 * min(zeros.std(), ones.std())


def test_duplicate_groups_are_exact_and_flag_disagreeing_labels(mnist: Dataset) -> None:
    assert len(explore.duplicates(mnist)) == 0 and explore.duplicates_figure(mnist) is None
    rows = np.arange(2000)
    images, labels = mnist.images[rows].copy(), mnist.labels[rows].copy()
    images[[10, 500]] = images[1500]  # three copies, one of them in the test rows
    labels[[10, 500]] = labels[1500]
    images[7] = images[8]
    labels[7] = (labels[8] + 1) % 10  # the same image under two labels
    is_train = rows < 1200
    ds = Dataset("planted", images, labels, is_train, class_names=FASHION_CLASSES)
    groups = duplicate_groups(images)
    assert [g.tolist() for g in groups] == [[7, 8], [10, 500, 1500]]
    table = explore.duplicates(ds)
    assert table["rows"].tolist() == ["7, 8", "10, 500, 1500"]
    assert table["labels agree"].tolist() == [False, True]
    assert table["splits"].tolist() == ["train", "test + train"]
    assert isinstance(explore.duplicates_figure(ds), Figure)


def test_every_figure_draws_for_any_dataset(mnist: Dataset) -> None:
    rows = np.arange(3000)
    ds = Dataset("fashion-like", mnist.images[rows], mnist.labels[rows], rows < 2500, class_names=FASHION_CLASSES)
    for fig in (
        explore.sample_grid(ds, 4, 0),
        explore.mean_images(ds),
        explore.intensity_figure(ds),
        explore.embedding_figure(explore.embedding(ds, 0, 0), ds.class_names),
    ):
        assert isinstance(fig, Figure) and fig.axes
    assert explore.summary(ds)["value"]["classes"].startswith("T-shirt/top, Trouser")
