"""The run cache: a repeated `mnistops train` returns the recorded run instead of training.

Trains the default config (150 trees, depth 25) once, then runs the same command again and
times it; both through the real CLI on a fresh SQLite store. The cache only answers for a clean
source tree, so the mnistops source is copied into a freshly committed repository and imported
from there. Prints one JSON line; target: the cached call under 5 s.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import measure

ROOT = Path(__file__).resolve().parent.parent
TARGET_CACHED_S = 5.0


def main() -> None:
    from mnistops.data import sources

    sources.load("mnist")
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        work = Path(tmp)
        src = work / "lib"
        shutil.copytree(ROOT / "lib" / "mnistops", src / "mnistops", ignore=shutil.ignore_patterns("__pycache__"))
        git = ["git", "-c", "user.name=b", "-c", "user.email=b@b"]
        subprocess.run([*git, "init", "-q"], cwd=src, check=True)
        (src / ".gitignore").write_text("__pycache__/\n")
        subprocess.run([*git, "add", "."], cwd=src, check=True)
        subprocess.run([*git, "commit", "-qm", "b"], cwd=src, check=True)
        env = {"PYTHONPATH": str(src), "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
        cmd = [sys.executable, "-m", "mnistops", "train", "--json"]
        first = measure(cmd, work, env)
        second = measure(cmd, work, env)
        assert first["returncode"] == 0 and second["returncode"] == 0, (first["stderr_tail"], second["stderr_tail"])
        a, b = json.loads(str(first["stdout"])), json.loads(str(second["stdout"]))
    result = {
        "benchmark": "run_cache",
        "train_wall_s": first["wall_s"],
        "cached_wall_s": second["wall_s"],
        "ratio": round(float(second["wall_s"]) / float(first["wall_s"]), 3),
        "same_run": a["run_id"] == b["run_id"],
        "cached": b["cached"],
        "target_cached_s": TARGET_CACHED_S,
        "met": bool(b["cached"] and a["run_id"] == b["run_id"] and float(second["wall_s"]) < TARGET_CACHED_S),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
