"""Data quality of the MNIST mnistops serves: what a model trained on it may assume."""

from __future__ import annotations

import numpy as np

from mnistops.data.dataset import Dataset
from mnistops.data.validate import count_duplicates


def test_no_image_of_the_test_set_repeats_a_training_image(mnist: Dataset) -> None:
    assert count_duplicates(mnist.images) == 0  # so no test image leaks from training


def test_pixel_statistics_are_those_of_mnist(mnist: Dataset) -> None:
    train = mnist.images[mnist.is_train]
    mean, std = train.mean() / 255, train.std() / 255
    assert abs(mean - 0.1307) < 5e-4 and abs(std - 0.3081) < 5e-4  # the usual normalisation constants
    assert (mnist.images[:, 0, :] == 0).mean() > 0.999 and (mnist.images[:, -1, :] == 0).mean() > 0.998  # blank borders


def test_classes_are_balanced_enough(mnist: Dataset) -> None:
    shares = np.bincount(mnist.labels, minlength=10) / mnist.n_samples
    assert shares.min() > 0.08 and shares.max() < 0.12
