"""Shadow replay: the last logged production inputs through the candidate and the champion.

Nothing is sent to a live server: the inputs are read from the prediction log, and both models
answer them here. Inputs the candidate trained on (its ``data.extra``) are left out: judged on
them it would look better than it is (``data from-log --hold-back`` keeps the newest labeled
inputs out of a feedback set for this). The gate shows how often the two agree, each one's accuracy on the inputs whose
true label came back (``POST /feedback``), and how their confidence differs; with
``gate.production_metric`` set, the candidate must not be worse on those labeled inputs
(:func:`mnistops.lifecycle.registry.promote`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mnistops.tracking import logdb, predlog
from mnistops.tracking.logdb import Target


@dataclass(frozen=True)
class Replay:
    """What the two models answered on the replayed inputs.

    Attributes:
        log: the prediction log read.
        seen: the newest inputs left out because the candidate trained on them.
        n: inputs replayed; ``labeled``: how many of them have a true label.
        agreement: share of inputs both models answer alike (None without a champion).
        accuracy: per role, the accuracy on the labeled inputs (None without any).
        confidence: per role, the mean probability of the answered class.
    """

    log: str
    seen: int
    n: int
    labeled: int
    agreement: float | None
    accuracy: dict[str, float | None]
    confidence: dict[str, float]

    @property
    def confidence_shift(self) -> float | None:
        """The candidate's mean confidence minus the champion's."""
        if "champion" not in self.confidence:
            return None
        return self.confidence["candidate"] - self.confidence["champion"]

    def describe(self) -> str:
        """The replay in a sentence."""
        said = f"replayed the {self.n:,} newest production inputs it did not train on ({self.seen:,} it did): "
        if self.agreement is not None:
            said += f"candidate and champion agree on {self.agreement:.1%}; "
        if self.labeled:
            accuracy = ", ".join(f"{k} {v:.4f}" for k, v in self.accuracy.items() if v is not None)
            said += f"on the {self.labeled:,} labeled ones {accuracy}"
        else:
            said += "none of them labeled"
        shift = self.confidence_shift
        return said + ("" if shift is None else f"; confidence {shift:+.4f} against the champion's")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the confidence shift."""
        return {**asdict(self), "confidence_shift": self.confidence_shift}


def production_inputs(log_path: Target, last: int, seen: set[str]) -> dict[str, np.ndarray]:
    """The ``last`` logged inputs (``images``) and their true labels (``truth``, -1: none), less
    those in ``seen`` (the candidate trained on them: judging it there would flatter it)."""
    rows = predlog.read(log_path, since=predlog.newest_since(log_path, last))
    newest = {k: rows[k][-last:] for k in ("images", "truth", "pid")}
    unseen = np.array([pid not in seen for pid in newest["pid"]], dtype=bool)
    return {
        "images": newest["images"][unseen],
        "truth": newest["truth"][unseen],
        "seen": np.array(int((~unseen).sum())),
    }


def replay(probas: dict[str, np.ndarray], truth: np.ndarray, log_path: Target, seen: int = 0) -> Replay:
    """Compare the models' class probabilities (per role, ``(n, 10)``) on replayed inputs
    (``seen``: how many were left out because the candidate trained on them)."""
    answers = {role: p.argmax(axis=1) for role, p in probas.items()}
    known = truth >= 0
    accuracy = {role: float(np.mean(a[known] == truth[known])) if known.any() else None for role, a in answers.items()}
    agreement = float(np.mean(answers["candidate"] == answers["champion"])) if "champion" in answers else None
    return Replay(
        logdb.describe(log_path),
        seen,
        len(truth),
        int(known.sum()),
        agreement,
        accuracy,
        {role: float(p.max(axis=1).mean()) for role, p in probas.items()},
    )
