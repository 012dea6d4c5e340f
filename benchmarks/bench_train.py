"""mnistops train vs the original notebook's pipeline, same machine, same run.

Both sides fit the same RandomForest (120 trees, depth 20) on the same stratified split of
the 70,000 MNIST images; what differs is everything around the fit. Prints one JSON line:
wall time, fit time, wall minus fit, peak RSS, model artifact size and accuracy of each
side, and the ratios the targets are stated in.

The mnistops store is a fresh SQLite file whose tables are created before timing (a one-off
cost of any SQL store; the notebook's file store has none). The data cache is filled first.

A third process, ``floor_pipeline.py``, does only what any MLflow-tracked scikit-learn forest
on this split must do before it fits: import MLflow and scikit-learn, open the SQLite store and
record a run, build the float32 training matrix. Its wall time and peak RSS are the floor
under both sides, and the JSON line also gives each side's overhead and peak above that floor.
The issue's RSS target (0.4x the notebook's) lies below the floor itself, which is why the
"above the floor" ratios are reported and checked too.

Usage: python benchmarks/bench_train.py [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import measure

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {
    "overhead_ratio": 0.35,
    "wall_ratio": 0.85,
    "rss_ratio": 0.4,
    "artifact_ratio": 0.2,
    "overhead_above_floor_ratio": 0.35,
    "rss_above_floor_ratio": 0.4,
}


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_once(workdir: Path) -> dict[str, object]:
    env = {"MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONWARNINGS": "ignore"}
    nb_dir = workdir / "notebook"
    nb_dir.mkdir()
    nb = measure(
        [sys.executable, str(ROOT / "benchmarks" / "notebook_pipeline.py"), str(nb_dir), "120", "20"], nb_dir, env
    )
    assert nb["returncode"] == 0, nb["stderr_tail"]
    nb_json = json.loads(str(nb["stdout"]).strip().splitlines()[-1])

    import mlflow

    floor_dir = workdir / "floor"
    floor_dir.mkdir()
    floor_uri = f"sqlite:///{floor_dir / 'mlflow.db'}"
    mlflow.MlflowClient(floor_uri).search_experiments()  # create the tables before timing
    floor = measure([sys.executable, str(ROOT / "benchmarks" / "floor_pipeline.py"), floor_uri], floor_dir, env)
    assert floor["returncode"] == 0, floor["stderr_tail"]

    ours_dir = workdir / "mnistops"
    ours_dir.mkdir()
    uri = f"sqlite:///{ours_dir / 'mlflow.db'}"
    mlflow.MlflowClient(uri).search_experiments()  # create the tables before timing
    ours = measure(
        [sys.executable, "-m", "mnistops", "train", "--config", str(ROOT / "configs" / "seed.yaml"), "--json"],
        ours_dir,
        {**env, "MLFLOW_TRACKING_URI": uri},
    )
    assert ours["returncode"] == 0, ours["stderr_tail"]
    ours_json = json.loads(str(ours["stdout"]))
    model_id = ours_json["model_uri"].removeprefix("models:/")
    location = mlflow.MlflowClient(uri).get_logged_model(model_id).artifact_location
    ours_bytes = _dir_bytes(Path(location.removeprefix("file://")))

    nb_wall, our_wall = float(nb["wall_s"]), float(ours["wall_s"])
    nb_fit, our_fit = float(nb_json["fit_s"]), float(ours_json["metrics"]["time_fit_s"])
    return {
        "floor": {"wall_s": float(floor["wall_s"]), "peak_rss_mb": floor["peak_rss_mb"]},
        "notebook": {
            "wall_s": nb_wall,
            "fit_s": round(nb_fit, 3),
            "overhead_s": round(nb_wall - nb_fit, 3),
            "peak_rss_mb": nb["peak_rss_mb"],
            "model_bytes": nb_json["model_bytes"],
            "accuracy": round(nb_json["accuracy"], 5),
            "f1_macro": round(nb_json["f1_macro"], 5),
        },
        "mnistops": {
            "wall_s": our_wall,
            "fit_s": round(our_fit, 3),
            "overhead_s": round(our_wall - our_fit, 3),
            "peak_rss_mb": ours["peak_rss_mb"],
            "model_bytes": ours_bytes,
            "accuracy": round(ours_json["metrics"]["accuracy"], 5),
            "f1_macro": round(ours_json["metrics"]["f1_macro"], 5),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=1, help="pairs to run; the median pair is reported")
    args = parser.parse_args()
    from mnistops.data import sources

    sources.load("mnist")  # fill the cache (both sides read it)
    runs = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
            runs.append(run_once(Path(tmp)))
    runs.sort(key=lambda r: r["mnistops"]["wall_s"] / r["notebook"]["wall_s"])  # type: ignore[index]
    r = runs[len(runs) // 2]
    nb, ours, floor = r["notebook"], r["mnistops"], r["floor"]
    ratios = {
        "overhead_ratio": round(ours["overhead_s"] / nb["overhead_s"], 3),
        "wall_ratio": round(ours["wall_s"] / nb["wall_s"], 3),
        "rss_ratio": round(ours["peak_rss_mb"] / nb["peak_rss_mb"], 3),
        "artifact_ratio": round(ours["model_bytes"] / nb["model_bytes"], 3),
        "accuracy_delta": round(abs(ours["accuracy"] - nb["accuracy"]), 5),
        "overhead_above_floor_ratio": round(
            (ours["overhead_s"] - floor["wall_s"]) / (nb["overhead_s"] - floor["wall_s"]), 3
        ),
        "rss_above_floor_ratio": round(
            (ours["peak_rss_mb"] - floor["peak_rss_mb"]) / (nb["peak_rss_mb"] - floor["peak_rss_mb"]), 3
        ),
        "floor_overhead_ratio": round(floor["wall_s"] / nb["overhead_s"], 3),
        "floor_rss_ratio": round(floor["peak_rss_mb"] / nb["peak_rss_mb"], 3),
    }
    met = {k: ratios[k] <= v for k, v in TARGETS.items()}
    met["accuracy_within_0.001"] = ratios["accuracy_delta"] <= 0.001
    print(
        json.dumps(
            {
                "benchmark": "train",
                "cpu_count": os.cpu_count(),
                **r,
                "ratios": ratios,
                "targets": TARGETS,
                "met": met,
                "repeat": args.repeat,
            }
        )
    )


if __name__ == "__main__":
    main()
