"""Is a batch of inputs, and what the model answered for them, still like the reference?

Five checks, each a test from scipy or scikit-learn with a p-value (how likely a difference at
least this large is if nothing changed), each with a sentence for a reader who is not a
statistician (:data:`EXPLAIN`). A check says ``drift`` below ``p < 0.001``, ``warn`` below
``0.01``, else ``ok``; the batch's verdict is its worst check's.

* ``input``: a two-sample Kolmogorov-Smirnov test per image feature and per PCA component,
  corrected for testing many at once (Benjamini-Hochberg);
* ``input_joint``: a classifier (logistic regression) tries to tell the batch from training images
  by all features and components together; its cross-validated scores are compared between the
  two groups with a Mann-Whitney U test (the AUC says how well it tells them apart: 0.5 not at all);
* ``predictions``: a chi-square test of the predicted classes against the classes the model
  predicted on its held-out split;
* ``confidence``: a binomial test of the share of answers less confident than the held-out
  split's least confident tenth;
* ``out_of_distribution``: a binomial test of the share of inputs that PCA reconstructs worse than
  99% of the training sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from mnistops.evaluate.features import FEATURES, image_features
from mnistops.evaluate.reference import OOD_QUANTILE, Reference

Verdict = Literal["ok", "warn", "drift"]
DRIFT_P = 0.001
WARN_P = 0.01
LOW_CONFIDENCE_QUANTILE = 0.1
JOINT_SAMPLE = 2000  # reference rows the joint test draws (at most)
ORDER: dict[str, int] = {"ok": 0, "warn": 1, "drift": 2}

EXPLAIN = {
    "input": "Each image feature (brightness, ink, position, size, stroke) and each main direction of variation "
    "(PCA) is compared with the training images; a small p-value means the new images differ in that respect "
    "more than chance would explain, even after allowing for checking many features at once.",
    "input_joint": "A simple classifier is trained to tell the new images from training images using all the "
    "features at once; if it can (an AUC well above 0.5), the images have changed in some combination of "
    "respects, even if no single one stands out.",
    "predictions": "The share of each predicted digit is compared with the shares the model predicted on its "
    "held-out images; a small p-value means the model now answers some digits much more or less often.",
    "confidence": "The share of answers the model is unsure of (less sure than its least sure tenth on the held-out "
    "images) is compared with that tenth; more unsure answers than expected suggest inputs it finds unfamiliar.",
    "out_of_distribution": "Images that look unlike anything in training (far from the main patterns of the "
    "training images) are counted; about 1 in 100 training images are that far, so a larger share is a warning sign.",
}


@dataclass
class Check:
    """One check's outcome."""

    name: str
    verdict: Verdict
    p_value: float
    statistic: float
    summary: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "verdict": self.verdict,
            "p_value": self.p_value,
            "statistic": self.statistic,
            "summary": self.summary,
            "explanation": EXPLAIN[self.name],
            "details": self.details,
        }


@dataclass
class Result:
    """All checks of one batch, and the overall verdict."""

    verdict: Verdict
    n: int
    checks: list[Check]
    current: dict[str, np.ndarray] = field(repr=False, default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "n": self.n, "checks": [c.to_dict() for c in self.checks]}


def _verdict(p: float) -> Verdict:
    return "drift" if p < DRIFT_P else "warn" if p < WARN_P else "ok"


def compare(ref: Reference, images: np.ndarray, predicted: np.ndarray, confidence: np.ndarray, seed: int = 0) -> Result:
    """Run every check on ``images`` (``uint8 (n, 28, 28)``) and the model's answers for them."""
    images = np.asarray(images, dtype=np.uint8).reshape(-1, 28, 28)
    feats = image_features(images)
    proj = ref.project(images)
    errors = ref.reconstruction_error(images)
    checks = [
        _input(ref, feats, proj),
        _joint(ref, feats, proj, seed),
        _predictions(ref, np.asarray(predicted)),
        _confidence(ref, np.asarray(confidence, dtype=np.float64)),
        _ood(ref, errors),
    ]
    overall = max((c.verdict for c in checks), key=ORDER.__getitem__)
    current = {
        "features": feats,
        "projections": proj,
        "errors": errors,
        "predicted": np.asarray(predicted),
        "confidence": np.asarray(confidence),
    }
    return Result(overall, len(images), checks, current)


def _input(ref: Reference, feats: np.ndarray, proj: np.ndarray) -> Check:
    from scipy.stats import false_discovery_control, ks_2samp

    names = [*FEATURES, *(f"pca_{i + 1}" for i in range(proj.shape[1]))]
    ours = np.column_stack([feats, proj])
    theirs = np.column_stack([ref.features, ref.projections])
    tests = [ks_2samp(ours[:, j], theirs[:, j]) for j in range(ours.shape[1])]
    raw = np.array([float(t.pvalue) for t in tests])
    adjusted = false_discovery_control(raw, method="bh")
    order = np.argsort(adjusted, kind="stable")
    worst = int(order[0])
    p = float(adjusted[worst])
    moved = [names[j] for j in order if adjusted[j] < WARN_P]
    summary = (
        f"{len(moved)} of {len(names)} features differ (adjusted p < {WARN_P}): {', '.join(moved[:6])}"
        if moved
        else f"none of {len(names)} features differs"
    )
    details = {
        names[j]: {
            "ks": round(float(tests[j].statistic), 4),
            "p_adjusted": float(adjusted[j]),
            "reference_median": float(np.median(theirs[:, j])),
            "current_median": float(np.median(ours[:, j])),
        }
        for j in range(len(names))
    }
    return Check("input", _verdict(p), p, float(tests[worst].statistic), summary, details)


def _joint(ref: Reference, feats: np.ndarray, proj: np.ndarray, seed: int) -> Check:
    from scipy.stats import mannwhitneyu
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    n_ref = min(len(ref.features), max(JOINT_SAMPLE, len(feats)))
    take = rng.choice(len(ref.features), n_ref, replace=False)
    x = np.vstack([np.column_stack([ref.features[take], ref.projections[take]]), np.column_stack([feats, proj])])
    y = np.r_[np.zeros(n_ref, int), np.ones(len(feats), int)]
    if len(feats) < 10:
        return Check("input_joint", "ok", 1.0, 0.5, f"too few images ({len(feats)}) for the joint test")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    scores = cross_val_predict(model, x, y, cv=folds, method="decision_function")
    auc = float(roc_auc_score(y, scores))
    p = float(mannwhitneyu(scores[y == 1], scores[y == 0], alternative="greater").pvalue)
    return Check(
        "input_joint",
        _verdict(p),
        p,
        auc,
        f"a classifier tells them apart with AUC {auc:.3f}",
        {"auc": auc, "reference_rows": int(n_ref)},
    )


def _predictions(ref: Reference, predicted: np.ndarray) -> Check:
    from scipy.stats import chisquare

    n = len(predicted)
    observed = np.bincount(predicted, minlength=10).astype(np.float64)
    share = np.bincount(ref.predicted, minlength=10) / max(len(ref.predicted), 1)
    share = (share + 1e-3) / (share + 1e-3).sum()  # a class never predicted on held-out stays possible
    expected = share * n
    test = chisquare(observed, expected)
    p = float(test.pvalue)
    diff = observed / n - share
    top = np.argsort(-np.abs(diff))[:3]
    summary = "; ".join(f"{int(c)}: {observed[c] / n:.1%} (reference {share[c]:.1%})" for c in top)
    return Check(
        "predictions",
        _verdict(p),
        p,
        float(test.statistic),
        summary,
        {"current_share": (observed / n).round(4).tolist(), "reference_share": share.round(4).tolist()},
    )


def _confidence(ref: Reference, confidence: np.ndarray) -> Check:
    from scipy.stats import binomtest

    threshold = float(np.quantile(ref.confidence, LOW_CONFIDENCE_QUANTILE))
    expected = float((ref.confidence < threshold).mean())
    low = int((confidence < threshold).sum())
    p = float(binomtest(low, len(confidence), max(expected, 1e-6), alternative="greater").pvalue)
    share = low / len(confidence)
    return Check(
        "confidence",
        _verdict(p),
        p,
        share,
        f"{share:.1%} of answers below confidence {threshold:.2f} (reference {expected:.1%})",
        {
            "threshold": threshold,
            "current_share": share,
            "reference_share": expected,
            "current_median": float(np.median(confidence)),
            "reference_median": float(np.median(ref.confidence)),
        },
    )


def _ood(ref: Reference, errors: np.ndarray) -> Check:
    from scipy.stats import binomtest

    far = int((errors > float(ref.ood_threshold)).sum())
    expected = 1 - OOD_QUANTILE
    p = float(binomtest(far, len(errors), expected, alternative="greater").pvalue)
    share = far / len(errors)
    return Check(
        "out_of_distribution",
        _verdict(p),
        p,
        share,
        f"{share:.1%} of inputs are far from the training images (reference {expected:.0%})",
        {"threshold": float(ref.ood_threshold), "count": far},
    )
