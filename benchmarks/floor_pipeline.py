"""The floor: what any MLflow-tracked scikit-learn forest on this split pays before it fits.

It imports MLflow and scikit-learn's ensembles, opens the SQLite store, records a run with one
parameter, reads MNIST from the cache and builds the float32 training matrix that
``RandomForestClassifier.fit`` needs (it converts anything else to that), then exits. No fit,
no evaluation, no model. ``bench_train.py`` measures it beside the notebook and mnistops, so
that each side's time and memory can be read as "floor + what the tool adds". It uses the same
garbage-collector settings as mnistops, which take about 1 s off a process like this one.

Usage: python floor_pipeline.py TRACKING_URI  (prints one JSON line)
"""

from __future__ import annotations

import gc
import json
import sys
import time

T0 = time.perf_counter()
gc.disable()  # as mnistops does (see mnistops.gc_phases): the floor is as low as we can make it

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import sklearn.ensemble  # noqa: E402, F401
from sklearn.model_selection import train_test_split  # noqa: E402

from mnistops.data.cache import dataset_path  # noqa: E402


def main() -> None:
    mlflow.set_tracking_uri(sys.argv[1])
    mlflow.set_experiment("floor")
    with mlflow.start_run():
        mlflow.log_param("n_estimators", 120)
    with np.load(dataset_path("mnist")) as z:
        images, labels = z["images"], z["labels"]
    rows = np.arange(len(labels))
    train, _ = train_test_split(rows, test_size=0.2, stratify=labels, random_state=42)
    x = np.empty((len(train), 784), dtype=np.float32)
    for start in range(0, len(train), 8192):  # no full-size temporary
        chunk = train[start : start + 8192]
        np.divide(images[chunk].reshape(len(chunk), 784), np.float32(255.0), out=x[start : start + len(chunk)])
    del images
    print(json.dumps({"setup_s": round(time.perf_counter() - T0, 3), "x_train_bytes": x.nbytes}))
    gc.freeze()  # and the interpreter's shutdown need not scan every object


if __name__ == "__main__":
    main()
