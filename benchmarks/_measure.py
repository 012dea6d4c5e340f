"""Run a command as a child process and measure its wall time and peak RSS (``os.wait4``)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path


def measure(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> dict[str, object]:
    """Run ``cmd``; return wall seconds, peak RSS in MiB of that child, exit code and stdout."""
    out_path, err_path = cwd / ".bench.out", cwd / ".bench.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    result = {
        "wall_s": round(wall, 3),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "returncode": proc.returncode,
        "stdout": out_path.read_text(),
        "stderr_tail": err_path.read_text()[-2000:],
    }
    out_path.unlink()
    err_path.unlink()
    return result
