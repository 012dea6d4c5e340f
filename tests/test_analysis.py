"""The evaluation notebook's analyses: per class, confused pairs, calibration (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from mnistops.config import Config
from mnistops.data.dataset import MNIST_CLASSES
from mnistops.evaluate import analysis


def predictions(labels: np.ndarray, proba: np.ndarray) -> analysis.RunPredictions:
    n = len(labels)
    images = np.zeros((n, 28, 28), np.uint8)
    return analysis.RunPredictions(
        "r", Config(), np.arange(n), images, labels.astype(np.uint8), proba.astype(np.float32), MNIST_CLASSES
    )


def one_hot(pred: np.ndarray, confidence: float = 0.9) -> np.ndarray:
    proba = np.full((len(pred), 10), (1 - confidence) / 9)
    proba[np.arange(len(pred)), pred] = confidence
    return proba


def test_per_class_and_the_class_each_is_taken_for() -> None:
    labels = np.repeat(np.arange(10), 10)
    pred = labels.copy()
    pred[:3] = 6  # three 0s read as 6
    pred[40] = 9  # one 4 read as 9
    p = predictions(labels, one_hot(pred))
    table = analysis.per_class(p)
    assert table.loc["0", "recall"] == 0.7 and table.loc["0", "errors"] == 3
    assert table.loc["0", "most often taken for"] == "6" and table.loc["4", "most often taken for"] == "9"
    assert table.loc["1", "most often taken for"] == "-" and table.loc["6", "precision"] == round(10 / 13, 4)
    assert table["support"].tolist() == [10] * 10


def test_confused_pairs_are_ordered_and_shared_of_their_class() -> None:
    labels = np.repeat(np.arange(10), 20)
    pred = labels.copy()
    pred[[40, 41, 42, 43]] = 9  # 2→9 four times (rows 40.. are class 2)
    pred[[60]] = 5  # 3→5 once
    p = predictions(labels, one_hot(pred))
    pairs = analysis.confused_pairs(p, k=5)
    assert pairs[["true", "predicted", "count"]].values.tolist() == [["2", "9", 4], ["3", "5", 1]]
    assert pairs["% of true class"].tolist() == [20.0, 5.0]
    assert isinstance(analysis.confused_pairs_figure(p, pairs), Figure)


def test_a_calibrated_model_has_an_ece_near_zero_and_an_overconfident_one_does_not() -> None:
    rng = np.random.default_rng(0)
    n = 20000
    confidence = rng.uniform(0.1, 1.0, n)
    labels = rng.integers(0, 10, n)
    right = rng.uniform(size=n) < confidence  # right exactly as often as it claims
    pred = np.where(right, labels, (labels + 1) % 10)
    proba = np.zeros((n, 10))
    proba[np.arange(n), pred] = confidence
    rest = (1 - confidence) / 9
    for c in range(10):
        proba[:, c] = np.where(pred == c, confidence, rest)
    calibrated = analysis.calibration(predictions(labels, proba))
    assert calibrated.ece < 0.02
    assert (calibrated.table["images"].sum(), len(calibrated.table)) == (n, 9)  # nothing below 0.1
    always_sure = analysis.calibration(predictions(labels, one_hot(pred, 0.999)))
    assert always_sure.ece == pytest.approx(0.999 - right.mean(), abs=1e-3)
    assert isinstance(analysis.reliability_figure(calibrated), Figure)


def test_the_champion_comparison_table() -> None:
    table = analysis.comparison(
        {"candidate": {"accuracy": 0.97, "f1_macro": 0.96}, "champion": {"accuracy": 0.96, "f1_macro": 0.965}}
    )
    assert table.loc["accuracy", "delta"] == 0.01 and table.loc["f1_macro", "delta"] == -0.005
    alone = analysis.comparison({"candidate": {"accuracy": 0.97}})
    assert alone.loc["accuracy", "champion"] is None
