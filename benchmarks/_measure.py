"""Run a command as a child process and measure its wall time and peak RSS.

Linux starts a child's peak RSS at its parent's peak (the high-water mark is inherited at fork
and kept through exec), so a benchmark process that has loaded data or libraries would inflate
what it measures. The command is therefore started by a tiny launcher process, which reports
the child's own ``ru_maxrss`` from ``os.wait4``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

_LAUNCHER = """
import json, os, subprocess, sys, time
t0 = time.perf_counter()
with open(sys.argv[2], "wb") as out, open(sys.argv[3], "wb") as err:
    p = subprocess.Popen(sys.argv[4:], stdout=out, stderr=err)
    _, status, usage = os.wait4(p.pid, 0)
wall = time.perf_counter() - t0
with open(sys.argv[1], "w") as f:
    json.dump({"wall_s": wall, "maxrss_kb": usage.ru_maxrss, "returncode": os.waitstatus_to_exitcode(status)}, f)
"""


def measure(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> dict[str, object]:
    """Run ``cmd``; return wall seconds, peak RSS in MiB of that child, exit code and stdout."""
    paths = [cwd / ".bench.json", cwd / ".bench.out", cwd / ".bench.err"]
    subprocess.run(
        [sys.executable, "-c", _LAUNCHER, *map(str, paths), *cmd],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        check=True,
    )
    stats = json.loads(paths[0].read_text())
    result = {
        "wall_s": round(stats["wall_s"], 3),
        "peak_rss_mb": round(stats["maxrss_kb"] / 1024, 1),
        "returncode": stats["returncode"],
        "stdout": paths[1].read_text(),
        "stderr_tail": paths[2].read_text()[-2000:],
    }
    for p in paths:
        p.unlink()
    return result


def _self_test() -> None:  # pragma: no cover - run by hand: python benchmarks/_measure.py
    import numpy as np

    ballast = np.ones(300_000_000 // 8)  # a 300 MB parent must not inflate the child's peak
    r = measure([sys.executable, "-c", "pass"], Path.cwd())
    print(json.dumps({"child_peak_mb": r["peak_rss_mb"], "parent_ballast_mb": ballast.nbytes >> 20}))


if __name__ == "__main__":
    _self_test()


def measure_tree(
    cmd: list[str], cwd: Path, env: dict[str, str] | None = None, interval: float = 0.05
) -> dict[str, object]:
    """Run ``cmd``; return wall seconds, the peak of the summed RSS of it and every descendant
    (a notebook batch is a runner plus kernel processes), exit code and output.

    The RSS is sampled every ``interval`` seconds, so a peak shorter than that can be missed.
    """
    import time

    import psutil

    out_path, err_path = cwd / ".bench.out", cwd / ".bench.err"
    peak = 0
    t0 = time.perf_counter()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdout=out, stderr=err)
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            total = 0
            with contextlib.suppress(psutil.Error):
                for p in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):  # it may end between the listing and the read
                        total += p.memory_info().rss
            peak = max(peak, total)
            time.sleep(interval)
    wall = time.perf_counter() - t0
    result = {
        "wall_s": round(wall, 3),
        "peak_rss_mb": round(peak / 2**20, 1),
        "returncode": proc.returncode,
        "stdout": out_path.read_text(),
        "stderr_tail": err_path.read_text()[-2000:],
    }
    out_path.unlink()
    err_path.unlink()
    return result
