"""Evaluation: metrics, confusion matrix and report from labels and class probabilities.

Pure functions of their inputs (no I/O); :mod:`mnistops.evaluate.plots` draws the figures and
:mod:`mnistops.tracking.store` logs the results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Evaluation:
    """What evaluating a model on a held-out split produced."""

    metrics: dict[str, float]
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]]
    report: str
    predictions: np.ndarray  # int64 (n,)
    proba: np.ndarray  # float32 (n, 10)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready metrics, per-class scores and confusion matrix."""
        return {"metrics": self.metrics, "per_class": self.per_class, "confusion_matrix": self.confusion}


def evaluate(y_true: np.ndarray, proba: np.ndarray, class_names: tuple[str, ...]) -> Evaluation:
    """Score class probabilities ``(n, k)`` against labels ``(n,)``.

    Metrics: accuracy, macro and weighted F1/precision/recall, log loss, per-class
    precision/recall/F1 (``precision_3`` ...), the confusion matrix and the text report.
    """
    from sklearn.metrics import (
        accuracy_score,
        classification_report,
        confusion_matrix,
        log_loss,
        precision_recall_fscore_support,
    )

    labels = list(range(len(class_names)))
    y_pred = proba.argmax(axis=1)
    metrics: dict[str, float] = {"accuracy": float(accuracy_score(y_true, y_pred))}
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=avg, zero_division=0)
        metrics.update({f"f1_{avg}": float(f), f"precision_{avg}": float(p), f"recall_{avg}": float(r)})
    metrics["log_loss"] = float(log_loss(y_true, np.clip(proba, 1e-15, 1.0), labels=labels))
    p, r, f, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    per_class = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
        for i, name in enumerate(class_names)
    }
    for i in labels:
        metrics.update({f"precision_{i}": float(p[i]), f"recall_{i}": float(r[i]), f"f1_{i}": float(f[i])})
    confusion = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    report = classification_report(y_true, y_pred, labels=labels, target_names=list(class_names), digits=4)
    return Evaluation(metrics, per_class, confusion, str(report), y_pred.astype(np.int64), proba.astype(np.float32))


def confident_mistakes(y_true: np.ndarray, proba: np.ndarray, k: int = 16) -> np.ndarray:
    """Row positions of the ``k`` wrong predictions made with the highest confidence."""
    y_pred = proba.argmax(axis=1)
    wrong = np.flatnonzero(y_pred != y_true)
    confidence = proba[wrong, y_pred[wrong]]
    order = np.argsort(-confidence, kind="stable")[:k]
    return wrong[order]
