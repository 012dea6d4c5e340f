"""A closer look at a trained run, for the evaluation notebook: per class, the confusions the
model makes most, and whether its confidence can be trusted (calibration).

Everything starts from a run's record: :func:`mnistops.tracking.runs.run_predictions` reads the probabilities the run
logged for its held-out rows (``predictions/predictions.npz``) and takes the images and true
labels from the dataset the run names, refusing if that data's fingerprint has changed. The
other functions are pure: arrays in, ``pandas.DataFrame`` tables or matplotlib figures out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mnistops.config import Config
from mnistops.figures import new_figure


@dataclass(frozen=True)
class RunPredictions:
    """A run's predictions on its held-out rows.

    Attributes:
        run_id: the training run.
        config: the config it was trained with (its saved ``config.yaml``).
        rows: ``int64 (n,)`` dataset rows of the held-out split.
        images: ``uint8 (n, 28, 28)`` their images.
        labels: ``uint8 (n,)`` their true labels.
        proba: ``float32 (n, k)`` the class probabilities the run logged.
        class_names: one name per label value.
    """

    run_id: str
    config: Config
    rows: np.ndarray
    images: np.ndarray
    labels: np.ndarray
    proba: np.ndarray
    class_names: tuple[str, ...]

    @property
    def predicted(self) -> np.ndarray:
        """``int64 (n,)`` the predicted class of each row."""
        return self.proba.argmax(axis=1)


def per_class(pred: RunPredictions) -> Any:
    """Precision, recall, F1 and support per class, the errors, and the class each is most
    often mistaken for."""
    import pandas as pd
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    k = len(pred.class_names)
    p, r, f, support = precision_recall_fscore_support(pred.labels, pred.predicted, labels=range(k), zero_division=0)
    cm = confusion_matrix(pred.labels, pred.predicted, labels=range(k))
    off = cm - np.diag(np.diag(cm))
    table = pd.DataFrame(
        {
            "precision": p,
            "recall": r,
            "f1": f,
            "support": support,
            "errors": off.sum(axis=1),
            "most often taken for": [
                pred.class_names[int(j)] if off[i].any() else "-" for i, j in enumerate(off.argmax(axis=1))
            ],
        },
        index=pd.Index(list(pred.class_names), name="class"),
    )
    return table.round({"precision": 4, "recall": 4, "f1": 4})


def confused_pairs(pred: RunPredictions, k: int = 10) -> Any:
    """The ``k`` (true, predicted) pairs the model confuses most, with each pair's share of its true class."""
    import pandas as pd
    from sklearn.metrics import confusion_matrix

    n = len(pred.class_names)
    cm = confusion_matrix(pred.labels, pred.predicted, labels=range(n))
    off = cm - np.diag(np.diag(cm))
    order = np.argsort(-off, axis=None, kind="stable")[:k]
    rows = []
    for flat in order:
        t, p = divmod(int(flat), n)
        if off[t, p] == 0:
            break
        rows.append(
            {
                "true": pred.class_names[t],
                "predicted": pred.class_names[p],
                "count": int(off[t, p]),
                "% of true class": round(100 * off[t, p] / max(cm[t].sum(), 1), 2),
            }
        )
    return pd.DataFrame(rows, columns=["true", "predicted", "count", "% of true class"])


def confused_pairs_figure(pred: RunPredictions, pairs: Any, per_pair: int = 8) -> Any:
    """Examples of each confused pair (a :func:`confused_pairs` table), most confident first:
    one row per pair, the confidence in the wrong class above each image."""
    names = list(pred.class_names)
    n = max(len(pairs), 1)
    cell_w, cell_h = 30, 40  # an image and the band above it for its caption
    mosaic = np.full((n * cell_h, per_pair * cell_w), 255, dtype=np.uint8)
    captions: list[tuple[float, float, str]] = []
    for i, (_, pair) in enumerate(pairs.iterrows()):
        t, p = names.index(pair["true"]), names.index(pair["predicted"])
        hits = np.flatnonzero((pred.labels == t) & (pred.predicted == p))
        hits = hits[np.argsort(-pred.proba[hits, p], kind="stable")][:per_pair]
        for j, r in enumerate(hits):
            y0, x0 = i * cell_h + 11, j * cell_w + 1
            mosaic[y0 : y0 + 28, x0 : x0 + 28] = 255 - pred.images[r]
            captions.append((x0 + 14, i * cell_h + 6, f"{pred.proba[r, p]:.2f}"))
    # One image and a few texts: drawing an Axes per example is ten times slower.
    fig = new_figure(0.75 * per_pair + 1.2, 1.0 * n + 0.5)
    ax = fig.add_axes((0.14, 0.02, 0.85, 0.9))
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    for x, y, text in captions:
        ax.text(x, y, text, ha="center", va="center", fontsize=8, color="crimson")
    ax.set_xticks([])
    ax.set_yticks(
        [i * cell_h + 25 for i in range(len(pairs))],
        [f"{r['true']}→{r['predicted']}" for _, r in pairs.iterrows()],
        fontsize=9,
    )
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    fig.suptitle("most confused pairs, true→predicted (confidence in the wrong class above each image)", fontsize=9)
    return fig


@dataclass(frozen=True)
class Calibration:
    """How well confidence matches accuracy.

    Attributes:
        table: per confidence bin, ``confidence`` (mean top probability), ``accuracy`` and
            ``images``; empty bins left out.
        ece: expected calibration error, the images-weighted mean gap between the two.
    """

    table: Any
    ece: float


def calibration(pred: RunPredictions, n_bins: int = 10) -> Calibration:
    """Reliability of the top-class probability, in ``n_bins`` equal-width bins over [0, 1]."""
    import pandas as pd

    confidence = pred.proba.max(axis=1).astype(np.float64)
    correct = (pred.predicted == pred.labels).astype(np.float64)
    # The bins of scikit-learn's calibration_curve (strategy="uniform").
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.searchsorted(edges[1:-1], confidence)
    count = np.bincount(which, minlength=n_bins)
    seen = count > 0
    conf = np.bincount(which, weights=confidence, minlength=n_bins)[seen] / count[seen]
    acc = np.bincount(which, weights=correct, minlength=n_bins)[seen] / count[seen]
    labels = [f"{edges[i]:.1f}-{edges[i + 1]:.1f}" for i in np.flatnonzero(seen)]
    table = pd.DataFrame(
        {"confidence": conf.round(4), "accuracy": acc.round(4), "images": count[seen]},
        index=pd.Index(labels, name="bin"),
    )
    ece = float(np.sum(count[seen] / len(confidence) * np.abs(acc - conf)))
    return Calibration(table, ece)


def reliability_figure(cal: Calibration) -> Any:
    """Accuracy against confidence per bin (on the diagonal: calibrated), and how many images each bin holds."""
    fig = new_figure(6, 6)
    top = fig.add_axes((0.12, 0.38, 0.82, 0.55))
    bottom = fig.add_axes((0.12, 0.08, 0.82, 0.2))
    t = cal.table
    top.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfectly calibrated")
    top.plot(t["confidence"], t["accuracy"], marker="o", label=f"model (ECE {cal.ece:.4f})")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.02)
    top.set_ylabel("accuracy")
    top.set_title("reliability: is a 0.8 confidence right 80% of the time?", fontsize=10)
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(t["confidence"], t["images"], width=0.08)
    bottom.set_yscale("log")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence (top-class probability)")
    bottom.set_ylabel("images")
    return fig


def comparison(
    scores: dict[str, dict[str, float]], metrics: tuple[str, ...] = ("accuracy", "f1_macro", "f1_weighted", "log_loss")
) -> Any:
    """Candidate against champion, scored afresh on the same split by the promotion gate."""
    import pandas as pd

    cand, champ = scores.get("candidate", {}), scores.get("champion")
    rows = []
    for m in metrics:
        if m in cand:
            other = champ.get(m) if champ else None
            rows.append(
                {
                    "metric": m,
                    "candidate": round(cand[m], 4),
                    "champion": None if other is None else round(other, 4),
                    "delta": None if other is None else round(cand[m] - other, 4),
                }
            )
    return pd.DataFrame(rows, columns=["metric", "candidate", "champion", "delta"]).set_index("metric")
