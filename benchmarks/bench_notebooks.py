"""The whole notebook suite against the seed notebook's pipeline, same machine, same run.

Four commands, each on a fresh store, measured one after the other:

* ``python run_notebooks.py --config configs/seed.yaml -p force True``: the four notebooks
  (explore, validate, train, evaluate), each in its own kernel, side by side where they may
  (``--jobs``' default: the cores), every executed copy rendered as HTML and logged to MLflow;
  the training notebook trains (no run cache);
* the same with ``--jobs 1``: one notebook after the other (the runner before side by side);
* ``mnistops train --config configs/seed.yaml``: the same training, from the CLI;
* ``benchmarks/notebook_pipeline.py``: the seed notebook's own pipeline (120 trees, depth 20).

Wall time, CPU time and peak memory of each (CPU: user + system of the command and every
process it waited for, kernels included; memory: the summed RSS of the process and its
children, sampled every 50 ms, since a batch is a runner plus its kernels). Target: the suite in
at most 1.0x the seed pipeline's wall time. ``suite_cpu_floor_vs_seed`` is the suite's CPU time
spread perfectly over the cores, against the seed's wall time: no schedule beats it. Prints one
JSON line (the median with --repeat N).

Usage: python benchmarks/bench_notebooks.py [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import measure_tree

ROOT = Path(__file__).resolve().parent.parent
TARGET_WALL_RATIO = 1.0


def processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_once(work: Path) -> dict[str, dict[str, object]]:
    base_env = {"MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONWARNINGS": "ignore"}
    sides: dict[str, dict[str, object]] = {}
    seed = str(ROOT / "configs" / "seed.yaml")
    suite = [sys.executable, str(ROOT / "run_notebooks.py"), "--config", seed, "-p", "force", "True"]
    commands = {
        "suite": [*suite, "--json", "--out", "outputs"],
        "suite_jobs1": [*suite, "--jobs", "1", "--json", "--out", "outputs"],
        "train": [sys.executable, "-m", "mnistops", "train", "--config", seed, "--force", "--json"],
        "seed_pipeline": [sys.executable, str(ROOT / "benchmarks" / "notebook_pipeline.py"), ".", "120", "20"],
    }
    for name, cmd in commands.items():
        folder = work / name
        folder.mkdir()
        env = {**base_env, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = measure_tree(cmd, folder, env)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        assert result["returncode"] == 0, (name, result["stderr_tail"])
        out = json.loads(
            str(result["stdout"]).strip().splitlines()[-1] if name == "seed_pipeline" else str(result["stdout"])
        )
        accuracy = {
            "suite": lambda o: o["training_metrics"]["accuracy"],
            "suite_jobs1": lambda o: o["training_metrics"]["accuracy"],
            "train": lambda o: o["metrics"]["accuracy"],
            "seed_pipeline": lambda o: o["accuracy"],
        }[name](out)
        if name.startswith("suite"):
            assert out["status"] == "FINISHED" and out["training_cached"] is False, out
        sides[name] = {
            "wall_s": result["wall_s"],
            "cpu_s": round(cpu, 2),
            "peak_rss_mb": result["peak_rss_mb"],
            "accuracy": round(accuracy, 5),
        }
    return sides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs; the median (by suite/seed wall ratio) is shown")
    args = parser.parse_args()
    from mnistops.data import sources
    from mnistops.runner.schedule import default_jobs

    sources.load("mnist")  # the data cache is filled before anything is timed
    runs = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="bench-notebooks-") as tmp:
            sides = run_once(Path(tmp))
        seed_wall = float(sides["seed_pipeline"]["wall_s"])
        sides["ratios"] = {
            "suite_wall_vs_seed": round(float(sides["suite"]["wall_s"]) / seed_wall, 3),
            "suite_jobs1_wall_vs_seed": round(float(sides["suite_jobs1"]["wall_s"]) / seed_wall, 3),
            "suite_cpu_floor_vs_seed": round(float(sides["suite"]["cpu_s"]) / default_jobs() / seed_wall, 3),
            "train_wall_vs_seed": round(float(sides["train"]["wall_s"]) / float(sides["seed_pipeline"]["wall_s"]), 3),
            "suite_rss_vs_seed": round(
                float(sides["suite"]["peak_rss_mb"]) / float(sides["seed_pipeline"]["peak_rss_mb"]), 3
            ),
        }
        runs.append(sides)
    ratios = [r["ratios"]["suite_wall_vs_seed"] for r in runs]
    median = runs[ratios.index(statistics.median_low(ratios))]
    print(
        json.dumps(
            {
                "benchmark": "notebooks",
                "processor": processor(),
                "cores": default_jobs(),
                "repeat": args.repeat,
                **median,
                "all_suite_wall_vs_seed": ratios,
                "target_suite_wall_vs_seed": TARGET_WALL_RATIO,
                "met": median["ratios"]["suite_wall_vs_seed"] <= TARGET_WALL_RATIO,
            }
        )
    )


if __name__ == "__main__":
    main()
