"""How long a monitoring verdict takes for a batch of 500 images, next to the model's own prediction
of the same batch measured in the same run.

A RandomForest like the default one (150 trees, depth 25) is fitted on the stratified split's
training rows with its reference profile (as ``mnistops train`` logs it); then, for batches of 500
held-out images (clean, rotated, fashion), the five checks run (``checks.compare``) and the
forest predicts the batch. Target: a verdict in under 2 s on this machine. Prints one JSON line
(medians of ``--repeat`` batches per kind).

Usage: python benchmarks/bench_monitor.py [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_notebooks import processor

TARGET_SECONDS = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    from sklearn.ensemble import RandomForestClassifier

    from mnistops.data import sources
    from mnistops.data.split import make_split
    from mnistops.evaluate import reference
    from mnistops.monitor import checks, simulate

    ds = sources.load("mnist")
    split = make_split(ds, "stratified", 0.2, 42)
    x_train, y_train = ds.images[split.train], ds.labels[split.train]
    forest = RandomForestClassifier(150, max_depth=25, n_jobs=-1, random_state=42).fit(
        x_train.reshape(-1, 784) / 255, y_train
    )
    x_test, y_test = ds.images[split.test], ds.labels[split.test]
    started = time.perf_counter()
    profile = reference.input_profile(x_train, y_train, 42)
    profile_s = time.perf_counter() - started
    forest.n_jobs = 1
    ref = reference.complete(profile, forest.predict_proba(x_test.reshape(-1, 784) / 255))
    fashion = sources.load("fashion-mnist").images
    out: dict[str, object] = {
        "benchmark": "monitor",
        "processor": processor(),
        "reference_profile_s": round(profile_s, 3),
    }
    worst = 0.0
    for kind in ("none", "rotate", "fashion"):
        verdict_s, predict_s, verdicts = [], [], []
        for seed in range(args.repeat):
            x, _ = simulate.shifted(x_test, y_test, kind, 500, "moderate", seed, fashion)
            t0 = time.perf_counter()
            proba = forest.predict_proba(x.reshape(-1, 784) / 255)
            predict_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            verdicts.append(checks.compare(ref, x, proba.argmax(1), proba.max(1), seed).verdict)
            verdict_s.append(time.perf_counter() - t0)
        median = statistics.median(verdict_s)
        worst = max(worst, median)
        predict = statistics.median(predict_s)
        out[kind] = {
            "verdict_s": round(median, 3),
            "forest_predict_s": round(predict, 3),
            "ratio_to_predict": round(median / predict, 2),
            "verdicts": verdicts,
        }
    out["target_s"] = TARGET_SECONDS
    out["meets_target"] = worst < TARGET_SECONDS
    print(json.dumps(out))


if __name__ == "__main__":
    main()
