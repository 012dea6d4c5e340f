"""Load from cache + validate + fingerprint, mnistops vs the notebook's way, same run.

The notebook's way: ``keras.datasets.mnist.load_data()`` reading its cached ``mnist.npz`` (a
compressed Keras-style .npz, rebuilt here from the same bytes since the real download needs the
internet, and read the way Keras reads it), the 70,000 images as a float32 DataFrame with a
``target`` column, its ``validar_dataset`` (emptiness, NaN count, range via ``drop``/``min``/
``max``) and its MD5 of ``pandas.util.hash_pandas_object``. mnistops: ``sources.load`` (which
reads the cache and checks the file by recomputing the SHA-256 fingerprint) and ``validate``
(shape, dtype, ranges, labels, splits, class balance, exact duplicates).

Each side runs in its own process, several times; the median is reported. Time is measured
inside the child from before its imports to the end (so pandas' import counts for the
notebook, mnistops' for mnistops); peak RSS is the child's (``os.wait4``). Prints one JSON line.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import measure

TARGETS = {"time_ratio": 0.2, "rss_ratio": 0.3}

OURS = """
import time, json
t0 = time.perf_counter()
from mnistops.data import sources
from mnistops.data.validate import validate
ds = sources.load("mnist", source="cache")
report = validate(ds)
print(json.dumps({"s": time.perf_counter() - t0, "fingerprint": ds.fingerprint, "n": report["n_samples"]}))
"""

NOTEBOOK = """
import time, json, hashlib
t0 = time.perf_counter()
import numpy as np
import pandas as pd
with np.load(KERAS_NPZ, allow_pickle=True) as f:  # keras/src/datasets/mnist.py
    x_train, y_train = f["x_train"], f["y_train"]
    x_test, y_test = f["x_test"], f["y_test"]
X = np.concatenate([x_train, x_test], axis=0)
y = np.concatenate([y_train, y_test], axis=0)
X = X.reshape((X.shape[0], -1)).astype("float32") / 255.0
df = pd.DataFrame(X)
df["target"] = y
assert not df.empty
nulls = df.isna().sum().sum()
num_cols = df.drop(columns=["target"])
lo, hi = num_cols.min().min(), num_cols.max().max()
digest = hashlib.md5(pd.util.hash_pandas_object(df, index=True).values).hexdigest()
print(json.dumps({"s": time.perf_counter() - t0, "fingerprint": digest, "n": len(df)}))
"""


def main(repeat: int = 5) -> None:
    import numpy as np

    from mnistops.data import sources

    ds = sources.load("mnist")  # make sure the cache is filled before timing
    results: dict[str, list[dict[str, float]]] = {"mnistops": [], "notebook": []}
    with tempfile.TemporaryDirectory() as tmp:
        keras_npz = Path(tmp) / "mnist.npz"
        np.savez_compressed(keras_npz, **ds.official_arrays())
        notebook = NOTEBOOK.replace("KERAS_NPZ", repr(str(keras_npz)))
        for _ in range(repeat):
            for name, code in (("notebook", notebook), ("mnistops", OURS)):
                m = measure([sys.executable, "-c", code], Path(tmp))
                assert m["returncode"] == 0, m["stderr_tail"]
                inner = json.loads(str(m["stdout"]))
                assert inner["n"] == 70_000
                results[name].append({"s": inner["s"], "peak_rss_mb": float(m["peak_rss_mb"])})
    summary = {
        name: {
            "time_s": round(statistics.median(r["s"] for r in runs), 4),
            "peak_rss_mb": round(statistics.median(r["peak_rss_mb"] for r in runs), 1),
        }
        for name, runs in results.items()
    }
    ratios = {
        "time_ratio": round(summary["mnistops"]["time_s"] / summary["notebook"]["time_s"], 3),
        "rss_ratio": round(summary["mnistops"]["peak_rss_mb"] / summary["notebook"]["peak_rss_mb"], 3),
    }
    met = {k: ratios[k] <= v for k, v in TARGETS.items()}
    print(
        json.dumps({"benchmark": "data", "repeat": repeat, **summary, "ratios": ratios, "targets": TARGETS, "met": met})
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
