"""What a notebook shows of a server's answers: the images with what was answered, and the
server's own Prometheus metrics as a table."""

from __future__ import annotations

from typing import Any

import numpy as np

from mnistops.figures import new_figure


def answers_figure(images: np.ndarray, answer: dict[str, Any], truth: np.ndarray | None = None) -> Any:
    """Each image with the class the server answered and its confidence (and the true class, in
    red where the answer is wrong)."""
    predictions = answer["predictions"]
    n = len(predictions)
    fig = new_figure(1.1 * n + 0.2, 1.6)
    for i, (image, p) in enumerate(zip(images, predictions, strict=True)):
        ax = fig.add_axes((0.01 + i / n, 0.02, 0.98 / n - 0.01, 0.62))
        ax.imshow(255 - np.asarray(image, np.uint8), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        wrong = truth is not None and int(truth[i]) != p["label"]
        caption = f"{p['label']}  ({p['confidence']:.2f})"
        if truth is not None:
            caption += f"\ntrue {int(truth[i])}"
        ax.set_title(caption, fontsize=10, color="crimson" if wrong else "black")
    version = answer["model"]["version"] or "-"
    fig.suptitle(f"answered by {answer['model']['name']} version {version}", fontsize=10, y=0.99)
    return fig


def metrics_table(text: str, prefix: str = "mnistops_") -> Any:
    """The samples of a ``/metrics`` page whose names start with ``prefix``, as a DataFrame
    (histogram buckets left out: their count and sum are kept)."""
    import pandas as pd
    from prometheus_client.parser import text_string_to_metric_families

    rows = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith(prefix) or sample.name.endswith("_bucket"):
                continue
            labels = ", ".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            rows.append({"metric": sample.name, "labels": labels, "value": sample.value})
    return pd.DataFrame(rows, columns=["metric", "labels", "value"])


def photo_of(image: np.ndarray, size: tuple[int, int] = (360, 480), seed: int = 0) -> bytes:
    """A PNG of ``image`` as a phone would take it: 10x larger, dark ink on light grey paper with a
    little noise, away from the centre of a ``size`` (width, height) frame."""
    from PIL import Image

    big = np.asarray(Image.fromarray(np.asarray(image, np.uint8)).resize((240, 240), Image.Resampling.BICUBIC), float)
    width, height = size
    paper = np.full((height, width), 225.0) + np.random.default_rng(seed).normal(0, 4, (height, width))
    top, left = height // 8, width // 3
    paper[top : top + 240, left : left + 240] -= np.clip(big, 0, 255) * (190 / 255)
    import io

    out = io.BytesIO()
    Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8)).convert("RGB").save(out, format="PNG")
    return out.getvalue()


def picture_figure(data: bytes, answer: dict[str, Any]) -> Any:
    """An uploaded picture as sent, next to the 28x28 image the server made of it and its answer."""
    import io

    from PIL import Image

    photo = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
    p = answer["predictions"][0]
    fig = new_figure(5.2, 2.6)
    left = fig.add_axes((0.02, 0.04, 0.44, 0.78))
    left.imshow(photo, cmap="gray", vmin=0, vmax=255)
    left.set_title(f"sent: {photo.shape[1]}x{photo.shape[0]} PNG", fontsize=10)
    right = fig.add_axes((0.54, 0.04, 0.44, 0.78))
    right.imshow(255 - np.asarray(answer["input"], np.uint8), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    right.set_title(f"seen (28x28): {p['label']} ({p['confidence']:.2f})", fontsize=10)
    for ax in (left, right):
        ax.set_xticks([])
        ax.set_yticks([])
    return fig
