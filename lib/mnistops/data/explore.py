"""What the exploration notebook shows: tables (``pandas.DataFrame``) and figures of a dataset.

Pure functions of a :class:`~mnistops.data.dataset.Dataset` and their explicit arguments
(random samples take a ``seed``); tables come back as DataFrames and figures as matplotlib
``Figure`` objects (see :mod:`mnistops.figures`), so a notebook only calls and shows them.
Any dataset mnistops loads works: ``mnist``, ``fashion-mnist`` or a user's file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mnistops.data.dataset import Dataset
from mnistops.figures import new_figure

# Ten colours that stay apart for the ten classes (matplotlib's "tab10").
_CMAP = "tab10"


def summary(ds: Dataset) -> Any:
    """One row per property: size, image shape, classes, official split, source, fingerprint."""
    import pandas as pd

    train, test = ds.official_indices()
    rows = {
        "dataset": ds.name,
        "images": f"{ds.n_samples:,}",
        "image shape": "x".join(str(d) for d in ds.images.shape[1:]) + f" {ds.images.dtype}",
        "classes": ", ".join(ds.class_names),
        "official split": f"train {len(train):,} / test {len(test):,}",
        "source": "cache" if ds.from_cache else ds.source,
        "fingerprint": ds.fingerprint,
    }
    return pd.DataFrame({"value": rows})


def class_balance(ds: Dataset) -> Any:
    """Images per class in the official train and test splits, with each class's share (%)."""
    import pandas as pd

    train, test = ds.official_indices()
    table = pd.DataFrame(
        {"train": ds.class_counts(train), "test": ds.class_counts(test)},
        index=pd.Index(list(ds.class_names), name="class"),
    )
    table["train %"] = (100 * table["train"] / max(len(train), 1)).round(2)
    table["test %"] = (100 * table["test"] / max(len(test), 1)).round(2)
    return table


def class_balance_figure(table: Any) -> Any:
    """Bars of each class's share of the train and test splits (a :func:`class_balance` table)."""
    fig = new_figure(8, 3.2)
    ax = fig.add_subplot()
    x = np.arange(len(table))
    ax.bar(x - 0.2, table["train %"], width=0.4, label="train")
    ax.bar(x + 0.2, table["test %"], width=0.4, label="test")
    ax.axhline(100 / len(table), color="grey", lw=0.8, ls="--", label="uniform")
    ax.set_xticks(x, list(table.index), rotation=30 if max(map(len, table.index)) > 2 else 0)
    ax.set_ylabel("share of split (%)")
    ax.set_title("class balance")
    ax.legend(loc="lower right", fontsize=8)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.22 if max(map(len, table.index)) > 2 else 0.12)
    return fig


def sample_rows(ds: Dataset, per_class: int, seed: int) -> np.ndarray:
    """``int64 (classes, per_class)`` row indices: ``per_class`` random images of each class."""
    rng = np.random.default_rng(seed)
    out = np.zeros((len(ds.class_names), per_class), dtype=np.int64)
    for c in range(len(ds.class_names)):
        rows = np.flatnonzero(ds.labels == c)
        out[c] = rng.choice(rows, size=per_class, replace=len(rows) < per_class)
    return out


def sample_grid(ds: Dataset, per_class: int = 10, seed: int = 42) -> Any:
    """A grid of random images: one row per class, ``per_class`` images per row."""
    rows = sample_rows(ds, per_class, seed)
    n_classes = len(ds.class_names)
    mosaic = np.full((n_classes * 30, per_class * 30), 255, dtype=np.uint8)
    for c in range(n_classes):
        for j, r in enumerate(rows[c]):
            mosaic[c * 30 + 1 : c * 30 + 29, j * 30 + 1 : j * 30 + 29] = 255 - ds.images[r]
    fig = new_figure(0.5 * per_class + 1.4, 0.5 * n_classes + 0.5)
    ax = fig.add_subplot()
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_yticks(np.arange(n_classes) * 30 + 14.5, list(ds.class_names), fontsize=8)
    ax.set_xticks([])
    ax.set_title(f"{per_class} random images per class (seed {seed})", fontsize=10)
    left = 0.22 if max(map(len, ds.class_names)) > 2 else 0.08
    fig.subplots_adjust(left=left, right=0.98, top=0.94, bottom=0.02)
    return fig


def mean_images(ds: Dataset) -> Any:
    """The mean image of each class (darker: ink more often there)."""
    n = len(ds.class_names)
    cols = 5
    fig = new_figure(1.6 * cols, 1.8 * -(-n // cols))
    for c in range(n):
        ax = fig.add_subplot(-(-n // cols), cols, c + 1)
        ax.imshow(ds.images[ds.labels == c].mean(axis=0), cmap="gray_r", vmin=0, vmax=255)
        ax.set_title(ds.class_names[c], fontsize=9)
        ax.axis("off")
    fig.suptitle("mean image per class", fontsize=10)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.86, bottom=0.02, hspace=0.3)
    return fig


def ink_table(ds: Dataset) -> Any:
    """Per class: mean pixel intensity, share of inked pixels (value > 0) and of dark ones (> 127).

    All in percent of the image, averaged over the class's images.
    """
    import pandas as pd

    flat = ds.images.reshape(ds.n_samples, -1)
    ink = np.count_nonzero(flat, axis=1) / flat.shape[1]
    dark = np.count_nonzero(flat > 127, axis=1) / flat.shape[1]
    mean = flat.mean(axis=1, dtype=np.float64) / 255
    frame = pd.DataFrame(
        {
            "class": np.asarray(ds.class_names)[ds.labels],
            "mean intensity %": 100 * mean,
            "inked pixels %": 100 * ink,
            "dark pixels %": 100 * dark,
        }
    )
    table = frame.groupby("class", sort=False).mean().loc[list(ds.class_names)]
    return table.round(2)


def intensity_figure(ds: Dataset) -> Any:
    """Two panels per class: how intense the inked pixels are, and how much of an image is ink."""
    from matplotlib import colormaps
    from matplotlib.ticker import NullFormatter, PercentFormatter

    colours = colormaps[_CMAP]
    flat = ds.images.reshape(ds.n_samples, -1)
    fig = new_figure(11, 3.8)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ink = 100 * np.count_nonzero(flat, axis=1) / flat.shape[1]
    edges = np.arange(0, 257, 16)
    edges[0] = 1  # inked pixels only
    for c, name in enumerate(ds.class_names):
        pixels = flat[ds.labels == c]
        binned = np.bincount((pixels >> 4).ravel(), minlength=16).astype(np.float64)  # 16 levels of 16 values
        binned[0] = np.count_nonzero(pixels) - binned[1:].sum()  # the first level without the blank pixels
        left.stairs(binned / max(binned.sum(), 1), edges, color=colours(c), lw=1.2, label=name)
    left.set_yscale("log")
    left.set_yticks([0.01, 0.02, 0.05, 0.1, 0.2, 0.5])
    left.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    left.yaxis.set_minor_formatter(NullFormatter())
    left.set_xlabel("pixel value (inked pixels only, bins of 16)")
    left.set_ylabel("share of inked pixels")
    left.set_title("pixel intensity", fontsize=10)
    left.legend(fontsize=7, ncol=2)
    right.boxplot([ink[ds.labels == c] for c in range(len(ds.class_names))], showfliers=False)
    right.set_xticks(
        range(1, len(ds.class_names) + 1),
        list(ds.class_names),
        fontsize=8,
        rotation=30 if max(map(len, ds.class_names)) > 2 else 0,
    )
    right.set_ylabel("inked pixels (% of image)")
    right.set_title("ink per image", fontsize=10)
    fig.subplots_adjust(
        left=0.07, right=0.99, top=0.92, bottom=0.18 if max(map(len, ds.class_names)) > 2 else 0.13, wspace=0.22
    )
    return fig


@dataclass(frozen=True)
class Embedding:
    """A 2-D view of a random sample of images.

    Attributes:
        coords: ``float64 (n, 2)``, the sample's first two principal components.
        labels: ``uint8 (n,)``, their labels.
        explained: ``float64 (2,)``, the share of pixel variance each component explains.
    """

    coords: np.ndarray
    labels: np.ndarray
    explained: np.ndarray


def embedding(ds: Dataset, n: int = 5000, seed: int = 42) -> Embedding:
    """PCA of ``n`` random images (all when ``n`` is 0 or above the dataset's size) to 2-D."""
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(ds.n_samples, size=n, replace=False)) if 0 < n < ds.n_samples else None
    x = ds.features(rows)
    pca = PCA(n_components=2, random_state=seed)
    coords = pca.fit_transform(x)
    labels = ds.labels if rows is None else ds.labels[rows]
    return Embedding(coords, labels, pca.explained_variance_ratio_)


def embedding_figure(emb: Embedding, class_names: tuple[str, ...]) -> Any:
    """The sample in its first two principal components, one colour per class."""
    fig = new_figure(7, 5.5)
    ax = fig.add_subplot()
    ax.scatter(
        emb.coords[:, 0], emb.coords[:, 1], c=emb.labels, cmap=_CMAP, vmin=-0.5, vmax=9.5, s=3, alpha=0.6, linewidths=0
    )
    for c, name in enumerate(class_names):
        if np.any(emb.labels == c):
            cx, cy = np.median(emb.coords[emb.labels == c], axis=0)
            ax.text(
                cx,
                cy,
                name,
                fontsize=11,
                weight="bold",
                ha="center",
                va="center",
                bbox={"boxstyle": "round,pad=0.2", "fc": "white", "alpha": 0.7, "lw": 0},
            )
    ax.set_xlabel(f"PC 1 ({emb.explained[0]:.1%} of variance)")
    ax.set_ylabel(f"PC 2 ({emb.explained[1]:.1%} of variance)")
    ax.set_title(f"PCA of {len(emb.labels):,} images (class label at each class's median)", fontsize=10)
    fig.subplots_adjust(left=0.1, right=0.98, top=0.94, bottom=0.09)
    return fig


def duplicates(ds: Dataset) -> Any:
    """Groups of identical images: their rows, labels and official splits (an empty table if none).

    A group whose labels disagree is a labelling error; one that spans train and test leaks
    test images into training.
    """
    import pandas as pd

    from mnistops.data.validate import duplicate_groups

    rows = []
    for group in duplicate_groups(ds.images):
        labels = sorted({ds.class_names[int(v)] for v in ds.labels[group]})
        splits = sorted({"train" if t else "test" for t in ds.is_train[group]})
        rows.append(
            {
                "rows": ", ".join(str(int(r)) for r in group),
                "images": len(group),
                "labels": " / ".join(labels),
                "splits": " + ".join(splits),
                "labels agree": len(labels) == 1,
            }
        )
    return pd.DataFrame(rows, columns=["rows", "images", "labels", "splits", "labels agree"])


def duplicates_figure(ds: Dataset, max_groups: int = 8) -> Any | None:
    """The first ``max_groups`` groups of identical images, one row each; None when there are none."""
    from mnistops.data.validate import duplicate_groups

    groups = duplicate_groups(ds.images)[:max_groups]
    if not groups:
        return None
    width = max(len(g) for g in groups)
    fig = new_figure(1.3 * width + 0.5, 1.4 * len(groups))
    for i, group in enumerate(groups):
        for j, r in enumerate(group):
            ax = fig.add_subplot(len(groups), width, i * width + j + 1)
            ax.imshow(ds.images[r], cmap="gray_r", vmin=0, vmax=255)
            split = "train" if ds.is_train[r] else "test"
            ax.set_title(f"row {int(r)}\n{ds.class_names[int(ds.labels[r])]} ({split})", fontsize=7)
            ax.axis("off")
    fig.subplots_adjust(left=0.02, right=0.98, top=0.88, bottom=0.02, hspace=0.6)
    return fig
