"""The monitoring report: one HTML page, every figure embedded (PNG data URIs), readable offline and
loading nothing from anywhere. matplotlib draws; nothing here computes a statistic."""

from __future__ import annotations

import base64
import html
from typing import Any

import numpy as np

from mnistops.evaluate.features import FEATURES
from mnistops.evaluate.reference import Reference
from mnistops.figures import new_figure, png_bytes
from mnistops.monitor.checks import EXPLAIN, Result

COLOURS = {"ok": "#2e7d32", "warn": "#b26a00", "drift": "#c62828"}


def _img(fig: Any, alt: str) -> str:
    data = base64.b64encode(png_bytes(fig)).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def histograms(ref: Reference, result: Result, k: int = 8) -> Any:
    """Reference against current for the ``k`` features that moved most."""
    names = [*FEATURES, *(f"pca_{i + 1}" for i in range(ref.projections.shape[1]))]
    ours = np.column_stack([result.current["features"], result.current["projections"]])
    theirs = np.column_stack([ref.features, ref.projections])
    details = result.checks[0].details
    order = sorted(range(len(names)), key=lambda j: details[names[j]]["p_adjusted"])[:k]
    cols = 4
    rows = (len(order) + cols - 1) // cols
    fig = new_figure(11, 2.3 * rows)
    fig.subplots_adjust(left=0.05, right=0.98, top=0.9, bottom=0.08, hspace=0.6, wspace=0.25)
    for i, j in enumerate(order):
        ax = fig.add_subplot(rows, cols, i + 1)
        lo, hi = np.percentile(np.r_[ours[:, j], theirs[:, j]], [0.5, 99.5])
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 30)
        ax.hist(theirs[:, j], bins, density=True, alpha=0.5, color="#3b6fb6", label="reference")
        ax.hist(ours[:, j], bins, density=True, alpha=0.5, color="#d1495b", label="current")
        ax.set_title(f"{names[j]} (p={details[names[j]]['p_adjusted']:.2g})", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_yticks([])
        if i == 0:
            ax.legend(fontsize=7)
    fig.suptitle("the features that moved most: training reference (blue) and current (red)", fontsize=10)
    return fig


def answers(ref: Reference, result: Result) -> Any:
    fig = new_figure(9, 2.8)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.85, bottom=0.15, wspace=0.25)
    ax = fig.add_subplot(1, 2, 1)
    details = next(c for c in result.checks if c.name == "predictions").details
    x = np.arange(10)
    ax.bar(x - 0.2, details["reference_share"], 0.4, color="#3b6fb6", label="held-out")
    ax.bar(x + 0.2, details["current_share"], 0.4, color="#d1495b", label="current")
    ax.set_xticks(x)
    ax.set_title("predicted classes", fontsize=10)
    ax.legend(fontsize=8)
    ax = fig.add_subplot(1, 2, 2)
    bins = np.linspace(0, 1, 21)
    ax.hist(ref.confidence, bins, density=True, alpha=0.5, color="#3b6fb6", label="held-out")
    ax.hist(result.current["confidence"], bins, density=True, alpha=0.5, color="#d1495b", label="current")
    ax.set_title("confidence (probability of the predicted class)", fontsize=10)
    ax.set_yticks([])
    ax.legend(fontsize=8)
    return fig


def _mosaic(images: np.ndarray, captions: list[str], title: str, cols: int = 10) -> Any:
    rows = max((len(images) + cols - 1) // cols, 1)
    fig = new_figure(1.0 * cols, 1.15 * rows + 0.4)
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.4 / (1.15 * rows + 0.4), bottom=0.01, hspace=0.45)
    for i, (image, caption) in enumerate(zip(images, captions, strict=True)):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(255 - np.asarray(image, float), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(caption, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def mean_images(result: Result, images: np.ndarray) -> Any:
    """The mean input of each predicted class, and how many there were."""
    predicted = result.current["predicted"]
    means = [images[predicted == c].mean(axis=0) if (predicted == c).any() else np.zeros((28, 28)) for c in range(10)]
    counts = [int((predicted == c).sum()) for c in range(10)]
    return _mosaic(np.asarray(means), [f"{c} (n={counts[c]})" for c in range(10)], "mean input per predicted class")


def far_inputs(ref: Reference, result: Result, images: np.ndarray, k: int = 20) -> Any | None:
    """The ``k`` inputs farthest from the training images (past the reference's threshold), with the
    class answered; None when there are none."""
    errors, predicted = result.current["errors"], result.current["predicted"]
    far = np.flatnonzero(errors > float(ref.ood_threshold))
    if not len(far):
        return None
    far = far[np.argsort(-errors[far])][:k]
    captions = [f"→{int(predicted[i])} e={errors[i]:.2f}" for i in far]
    return _mosaic(images[far], captions, "the farthest inputs, with the class answered")


ACCURACY_NOTE = (
    "Measured: on the inputs whose true label came back (POST /feedback, or a batch file's labels). "
    "Estimated: from the model's confidence, calibrated on the held-out split when it was trained; it holds "
    "while that calibration does, and overstates accuracy on inputs unlike the training images (see the "
    "monitoring manual's table)."
)


def accuracy_section(accuracy: dict[str, Any]) -> str:
    """The accuracy, measured and estimated, each with its 95% interval, as an HTML table."""
    rows = []
    for kind, what in (("labeled", "measured on labeled inputs"), ("estimated", "estimated from confidence")):
        a = accuracy.get(kind)
        value = "-" if a is None else f"{a['accuracy']:.3f} [{a['low']:.3f}, {a['high']:.3f}]"
        over = "none labeled" if a is None and kind == "labeled" else ("-" if a is None else f"{a['n']:,} inputs")
        rows.append(f"<tr><td>{what}</td><td>{value}</td><td>{over}</td></tr>")
    return (
        "<h2>Accuracy</h2><table><tr><th>accuracy</th><th>value [95% interval]</th><th>over</th></tr>"
        + "".join(rows)
        + f"</table><p>{html.escape(ACCURACY_NOTE)}</p>"
    )


def render(
    ref: Reference,
    result: Result,
    images: np.ndarray,
    title: str,
    about: dict[str, Any],
    accuracy: dict[str, Any] | None = None,
) -> str:
    """The report as one HTML document (``accuracy``: what :func:`mnistops.monitor.watch.accuracy_of` says)."""
    images = np.asarray(images, np.uint8).reshape(-1, 28, 28)
    far_fig = far_inputs(ref, result, images)
    rows = "".join(
        f'<tr><td>{html.escape(c.name)}</td><td style="color:{COLOURS[c.verdict]};font-weight:bold">{c.verdict}</td>'
        f"<td>{c.p_value:.3g}</td><td>{html.escape(c.summary)}</td><td>{html.escape(EXPLAIN[c.name])}</td></tr>"
        for c in result.checks
    )
    facts = "".join(f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>" for k, v in about.items())
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>body{{font-family:system-ui,sans-serif;margin:2rem;color:#222}}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3rem .5rem;vertical-align:top;"
        "font-size:.9rem}th{background:#f3f3f3}img{max-width:100%}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p style="font-size:1.4rem">Verdict: <b style="color:{COLOURS[result.verdict]}">{result.verdict.upper()}'
        f"</b> over {result.n:,} inputs. A check says drift when its p-value is below 0.001, warn below 0.01.</p>",
        f"<ul>{facts}</ul>",
        "<table><tr><th>check</th><th>verdict</th><th>p-value</th><th>what was seen</th><th>what it means</th></tr>",
        rows,
        "</table>",
        accuracy_section(accuracy or {}),
        "<h2>Inputs</h2>",
        _img(histograms(ref, result), "feature histograms"),
        "<h2>Answers</h2>",
        _img(answers(ref, result), "predicted classes and confidence"),
        "<h2>Mean image per predicted class</h2>",
        "<p>What the inputs the model called each digit look like on average.</p>",
        _img(mean_images(result, images), "mean images"),
        "<h2>Inputs far from the training images</h2>",
    ]
    if far_fig is not None:
        parts.append(_img(far_fig, "the farthest inputs"))
    else:
        parts.append("<p>None: every input is as close to the training images as 99% of them are.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
