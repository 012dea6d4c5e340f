"""Evaluation on hand-made cases whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from mnistops.evaluate.metrics import confident_mistakes, evaluate


def _onehot(labels: list[int], confidence: list[float]) -> np.ndarray:
    p = np.full((len(labels), 10), 0.0)
    for i, (lab, c) in enumerate(zip(labels, confidence, strict=True)):
        p[i, :] = (1 - c) / 9
        p[i, lab] = c
    return p


def test_metrics_match_a_hand_computed_case() -> None:
    y = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9])
    pred = y.copy()
    pred[0] = 1  # one class-0 image called 1
    ev = evaluate(y, _onehot(pred.tolist(), [0.9] * 20), tuple(map(str, range(10))))
    assert ev.metrics["accuracy"] == pytest.approx(19 / 20)
    assert ev.metrics["recall_0"] == pytest.approx(0.5) and ev.metrics["precision_1"] == pytest.approx(2 / 3)
    assert ev.metrics["f1_0"] == pytest.approx(2 / 3)
    assert ev.confusion[0][1] == 1 and ev.confusion[0][0] == 1 and sum(map(sum, ev.confusion)) == 20
    assert ev.metrics["log_loss"] == pytest.approx(-(19 * np.log(0.9) + np.log(0.1 / 9)) / 20)
    assert "macro avg" in ev.report and ev.per_class["0"]["support"] == 2


def test_confident_mistakes_come_most_confident_first() -> None:
    y = np.array([0, 1, 2, 3])
    proba = _onehot([1, 1, 0, 0], [0.6, 0.99, 0.95, 0.7])
    assert confident_mistakes(y, proba).tolist() == [2, 3, 0]
