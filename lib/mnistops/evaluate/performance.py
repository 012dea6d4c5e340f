"""How well the model does on a window of production traffic: measured where labels came back,
estimated from its confidence where they did not.

The estimate is confidence-based performance estimation in the manner of NannyML's CBPE: at
training time, the held-out split tells how often the model is right at each confidence (an
isotonic regression of "right" on the probability of the predicted class, stored in the reference
profile); in production, each answer's calibrated confidence is the chance it is right, and their
mean is the expected accuracy. Its 95% interval is the sampling error of that mean. It holds while
the model's confidence stays calibrated under the shift, which is the case for shifts that make
digits harder to read the way held-out digits are hard, and not for inputs unlike anything trained
on (inverted digits, clothing), where a forest can be confidently wrong: docs/monitoring.md has
the figures per shift.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

Z95 = 1.959964  # the normal quantile of a two-sided 95% interval


@dataclass(frozen=True)
class Accuracy:
    """An accuracy with its 95% interval, over ``n`` predictions."""

    accuracy: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, rounded to 4 places."""
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def calibration(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The chance of being right at each confidence, fitted on held-out predictions: the isotonic
    regression's breakpoints ``(confidence, chance)``, which :func:`estimate` interpolates."""
    from sklearn.isotonic import IsotonicRegression

    fit = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
    fit.fit(np.asarray(confidence, float), np.asarray(correct, float))
    return np.asarray(fit.X_thresholds_, float), np.asarray(fit.y_thresholds_, float)


def estimate(confidence: np.ndarray, calibration_x: np.ndarray, calibration_y: np.ndarray) -> Accuracy:
    """The expected accuracy of predictions answered with ``confidence``, without their labels."""
    chance = np.interp(np.asarray(confidence, float), calibration_x, calibration_y)
    n = len(chance)
    mean = float(chance.mean())
    half = Z95 * float(np.sqrt((chance * (1 - chance)).sum())) / n
    return Accuracy(mean, max(0.0, mean - half), min(1.0, mean + half), n)


def measured(predicted: np.ndarray, labels: np.ndarray) -> Accuracy:
    """The accuracy of ``predicted`` against the true ``labels``, with its Wilson 95% interval."""
    n = len(labels)
    right = float((np.asarray(predicted) == np.asarray(labels)).sum())
    p = right / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * np.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return Accuracy(p, max(0.0, centre - half), min(1.0, centre + half), n)
