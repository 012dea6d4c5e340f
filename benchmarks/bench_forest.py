"""The served forest's three ways to predict, same forest, same images, same run.

The default RandomForest (150 trees, depth 25, the config's seed) is trained on the stratified
training split of real MNIST; then each way predicts held-out images, different ones each call
(the same image over and over would answer from the caches):

* ``predict_proba``: scikit-learn's own (what ``mlflow.pyfunc`` calls);
* ``per_tree``: :func:`mnistops.lifecycle.versions.forest_proba`, the trees' probabilities added
  one tree at a time without the per-call set-up (the server's path before the packed forest);
* ``packed``: :mod:`mnistops.lifecycle.packed`, the server's path now.

Each line: the median milliseconds per call of 1, 8 and 64 images, and all 14,000 held-out
images; and whether ``packed`` gave the same bits as ``predict_proba``'s own sum on all 14,000.
Prints one JSON line.

Usage: python benchmarks/bench_forest.py [--calls N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_notebooks import processor


def timed(predict: Any, images: np.ndarray, rows: int, calls: int) -> float:
    """Median milliseconds of ``calls`` calls of ``rows`` images, each call other images."""
    took = []
    for i in range(calls):
        start = (i * rows) % (len(images) - rows)
        batch = images[start : start + rows]
        t0 = time.perf_counter()
        predict(batch)
        took.append(time.perf_counter() - t0)
    return round(float(np.median(took)) * 1000, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per size (a tenth for 64 images)")
    args = parser.parse_args()

    from sklearn.ensemble import RandomForestClassifier

    from mnistops.data import sources
    from mnistops.data.dataset import to_features
    from mnistops.data.split import make_split
    from mnistops.lifecycle import packed, versions

    ds = sources.load("mnist")
    split = make_split(ds)
    x_train, x_test = to_features(ds.images[split.train]), to_features(ds.images[split.test])
    forest = RandomForestClassifier(n_estimators=150, max_depth=25, n_jobs=-1, random_state=42)
    forest.fit(x_train, ds.labels[split.train])
    t0 = time.perf_counter()
    fast = packed.pack(forest)
    pack_s = time.perf_counter() - t0
    assert fast is not None, "numba is not importable"
    ways = {
        "predict_proba": forest.predict_proba,
        "per_tree": lambda x: versions.forest_proba((None, forest), x),
        "packed": fast.proba,
    }
    results: dict[str, dict[str, float]] = {}
    for name, predict in ways.items():
        predict(x_test[:1])  # warm
        results[name] = {f"{rows} images": timed(predict, x_test, rows, args.calls) for rows in (1, 8)}
        results[name]["64 images"] = timed(predict, x_test, 64, max(5, args.calls // 10))
        results[name]["14000 images"] = timed(predict, x_test, len(x_test) - 1, 3)
    reference = versions.forest_proba((None, forest), x_test)
    out = {
        "benchmark": "forest",
        "processor": processor(),
        "cpus": os.cpu_count(),
        "forest": "RandomForest 150 trees, depth 25, trained on the 56,000-image split",
        "nodes": int(sum(t.tree_.node_count for t in forest.estimators_)),
        "packed_mb": round(fast.nbytes / 2**20, 1),
        "pack_s": round(pack_s, 2),
        "ms_per_call": results,
        "speedup_1_image_vs_per_tree": round(results["per_tree"]["1 images"] / results["packed"]["1 images"], 1),
        "speedup_64_images_vs_per_tree": round(results["per_tree"]["64 images"] / results["packed"]["64 images"], 1),
        "same_bits_on_14000": bool(np.array_equal(fast.proba(x_test), reference)),
        "same_labels_as_predict_proba": bool(
            np.array_equal(fast.proba(x_test).argmax(1), forest.predict_proba(x_test).argmax(1))
        ),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
