"""`mnistops serve` against `mlflow models serve` of the same RandomForest champion, same run.

A fresh store gets the default RandomForest (150 trees, depth 25) trained and promoted; then each
server in turn is started on 127.0.0.1 and a free port, warmed up, and loaded over loopback with
real MNIST test images by ``wrk`` (a load generator written in C; Debian's package), for a fixed
time per scenario. A Lua script hands wrk 64 different bodies (different images) in turn, so
that no server answers the same image over and over from its caches:

* ``single c=1``: one image per request, one connection;
* ``single c=8``: one image per request, eight connections at once;
* ``batch64 c=1``: 64 images per request, one connection;
* mnistops only: the same with raw pixels (``application/octet-stream``), and ``single c=8``
  with ``--workers 2``.

Both servers get the same JSON for the same images (``{"images": [...]}`` for mnistops,
``{"inputs": [...]}`` for MLflow's scoring server). wrk's own CPU time is reported beside each
line (``client_cpu``, in cores): well under one core means the client is not what limits the
figures. Then ``breakdown``: 300 requests one after the other, each split into its stages by the
``Server-Timing`` header mnistops answers with (:mod:`mnistops.serve.timing`), the medians.

Targets (issue 21): one image at c=1, p50 at most 2 ms and at most 0.1x MLflow's; at c=8 at least
1,500 requests/s and at least 40x MLflow's, p99 under 20 ms; 64-image batches at least 20,000
images/s. Prints one JSON line.

Usage: python benchmarks/bench_serve.py [--seconds S]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_notebooks import processor
from mnistops.serve.launch import free_port

TARGET_P50_MS, TARGET_P50_RATIO = 2.0, 0.1  # one image, one client
TARGET_RPS, TARGET_RPS_RATIO, TARGET_P99_MS = 1500.0, 40.0, 20.0  # one image, eight clients
TARGET_BATCH_IMAGES_PER_S = 20_000.0
BODIES = 64  # different bodies each scenario cycles through
# (name, images per request, connections, body format)
SCENARIOS = (
    ("single c=1", 1, 1, "json"),
    ("single c=8", 1, 8, "json"),
    ("batch64 c=1", 64, 1, "json"),
)
RAW_SCENARIOS = (
    ("raw single c=1", 1, 1, "raw"),
    ("raw single c=8", 1, 8, "raw"),
    ("raw batch64 c=1", 64, 1, "raw"),
    ("raw batch64 c=2", 64, 2, "raw"),
)
WRK_SCRIPT = """
local bodies, i = {}, 0
local folder, count = os.getenv("BODIES"), tonumber(os.getenv("COUNT"))
local path, ctype = os.getenv("TARGET"), os.getenv("CTYPE")
for k = 1, count do
  local f = assert(io.open(folder .. "/" .. k .. ".body", "rb"))
  bodies[k] = f:read("*a")
  f:close()
end
request = function()
  i = i % count + 1
  return wrk.format("POST", path, {["Content-Type"] = ctype}, bodies[i])
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d %d %f %f\\n", summary.requests, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.duration, 0, latency:percentile(50), latency:percentile(99)))
end
"""


def train_champion(work: Path, env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mnistops", "train", "--promote", "--json"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"training the champion failed: {proc.stderr[-2000:]}")


def start(
    kind: str, work: Path, env: dict[str, str], extra: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    if kind == "mnistops":
        cmd = [
            sys.executable,
            "-m",
            "mnistops",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--set",
            "serve.prediction_log=predictions.db",
            *extra,
        ]
        ready = "/ready"
    else:
        mlflow = str(Path(sys.executable).parent / "mlflow")
        cmd = [
            mlflow,
            "models",
            "serve",
            "-m",
            "models:/mnist-classifier@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ]
        ready = "/ping"
    path = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
    log = open(work / f"{kind}.log", "wb")  # noqa: SIM115 (closed with the process)
    process = subprocess.Popen(cmd, cwd=work, env=path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{kind} exited: {(work / f'{kind}.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + ready, timeout=2) as r:
                if r.status == 200:
                    return process, url
        except OSError:
            pass
        time.sleep(0.3)
    stop(process)
    raise SystemExit(f"{kind} did not become ready in 180 s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group (mlflow models serve runs uvicorn as a child), by pid."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def body(kind: str, images: np.ndarray, fmt: str) -> bytes:
    if fmt == "raw":
        return np.ascontiguousarray(images, dtype=np.uint8).tobytes()
    key = "images" if kind == "mnistops" else "inputs"
    return json.dumps({key: images.tolist()}).encode()


def load(
    kind: str, url: str, images: np.ndarray, scenario: tuple[str, int, int, str], seconds: float, work: Path
) -> dict[str, Any]:
    """wrk for ``seconds`` with ``connections`` connections, cycling through BODIES bodies of
    ``per_request`` images each; latency percentiles, throughput and wrk's own CPU use."""
    _, per_request, connections, fmt = scenario
    folder = work / f"bodies-{kind}-{per_request}-{fmt}"
    folder.mkdir(exist_ok=True)
    for k in range(BODIES):
        (folder / f"{k + 1}.body").write_bytes(body(kind, images[k * per_request : (k + 1) * per_request], fmt))
    script = work / "bodies.lua"
    script.write_text(WRK_SCRIPT)
    env = {
        **os.environ,
        "BODIES": str(folder),
        "COUNT": str(BODIES),
        "TARGET": "/predict" if kind == "mnistops" else "/invocations",
        "CTYPE": "application/octet-stream" if fmt == "raw" else "application/json",
    }
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s", "-s", str(script), url]
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(process.pid, 0)
    assert process.stdout is not None
    out = process.stdout.read().decode()
    line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
    if status != 0 or line is None:
        raise SystemExit(f"wrk failed: {out[-2000:]}")
    requests, bad_status, socket_errors, duration_us, _, p50_us, p99_us = (float(v) for v in line.split()[1:])
    wall = duration_us / 1e6
    return {
        "requests": int(requests),
        "failures": int(bad_status + socket_errors),
        "p50_ms": round(p50_us / 1000, 3),
        "p99_ms": round(p99_us / 1000, 3),
        "requests_per_s": round(requests / wall, 1),
        "images_per_s": round(requests * per_request / wall, 1),
        "client_cpu": round((usage.ru_utime + usage.ru_stime) / wall, 2),
    }


def breakdown(url: str, images: np.ndarray, per_request: int, fmt: str, count: int = 300) -> dict[str, float]:
    """Median milliseconds of each stage of ``count`` requests sent one after the other (the
    ``Server-Timing`` header), and ``http``: what the client waited beyond the app."""
    import httpx

    ctype = "application/octet-stream" if fmt == "raw" else "application/json"
    stages: dict[str, list[float]] = {}
    with httpx.Client(base_url=url, timeout=60) as http:
        for i in range(count):
            k = i % BODIES
            content = body("mnistops", images[k * per_request : (k + 1) * per_request], fmt)
            t0 = time.perf_counter()
            r = http.post("/predict", content=content, headers={"Content-Type": ctype})
            client_ms = (time.perf_counter() - t0) * 1000
            r.raise_for_status()
            timing = {}
            for part in r.headers["server-timing"].split(","):
                name, dur = part.strip().split(";dur=")
                timing[name] = float(dur)
            timing["http"] = client_ms - timing["app"]
            timing["client"] = client_ms
            for name, ms in timing.items():
                stages.setdefault(name, []).append(ms)
    return {name: round(float(np.median(v)), 3) for name, v in stages.items()}


def check_same_answers(kind: str, url: str, images: np.ndarray) -> list[int]:
    import httpx

    path = "/predict" if kind == "mnistops" else "/invocations"
    r = httpx.post(
        url + path, content=body(kind, images, "json"), headers={"Content-Type": "application/json"}, timeout=60
    )
    r.raise_for_status()
    answer = r.json()
    labels = [p["label"] for p in answer["predictions"]]
    if kind == "mnistops":
        raw = httpx.post(
            url + path,
            content=body(kind, images, "raw"),
            headers={"Content-Type": "application/octet-stream"},
            timeout=60,
        ).json()
        if [p["label"] for p in raw["predictions"]] != labels:
            raise SystemExit("raw pixels and JSON got different answers")
    return labels


def run_server(
    kind: str, work: Path, env: dict[str, str], images: np.ndarray, seconds: float, extra: tuple[str, ...] = ()
) -> tuple[dict[str, Any], list[int], dict[str, Any]]:
    scenarios: tuple[tuple[str, int, int, str], ...] = SCENARIOS
    if kind == "mnistops" and not extra:
        scenarios += RAW_SCENARIOS
    if extra:
        scenarios = (("single c=8", 1, 8, "json"), ("raw single c=8", 1, 8, "raw"), ("raw batch64 c=2", 64, 2, "raw"))
    process, url = start(kind, work, env, extra)
    results: dict[str, Any] = {}
    stages: dict[str, Any] = {}
    try:
        labels = check_same_answers(kind, url, images[:64])
        load(kind, url, images, ("warm-up", 1, 2, "json"), 3, work)
        for scenario in scenarios:
            results[scenario[0]] = load(kind, url, images, scenario, seconds, work)
        if kind == "mnistops" and not extra:
            for name, per, fmt in (
                ("single json", 1, "json"),
                ("single raw", 1, "raw"),
                ("batch64 json", 64, "json"),
                ("batch64 raw", 64, "raw"),
            ):
                stages[name] = breakdown(url, images, per, fmt)
    finally:
        stop(process)
    return results, labels, stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per scenario")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (Debian's HTTP load generator)")

    from mnistops.data import sources

    ds = sources.load("mnist")
    images = ds.images[-64 * BODIES :]
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "MLFLOW_DISABLE_TELEMETRY": "true"}
    seconds = max(1, round(args.seconds))
    try:
        train_champion(work, env)
        theirs, their_labels, _ = run_server("mlflow", work, env, images, seconds)
        ours, our_labels, stages = run_server("mnistops", work, env, images, seconds)
        two, _, _ = run_server("mnistops", work, env, images, seconds, ("--workers", "2"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = report(ours, theirs, two, stages, our_labels == their_labels)
    print(json.dumps(out))


def report(
    ours: dict[str, Any], theirs: dict[str, Any], two: dict[str, Any], stages: dict[str, Any], same: bool
) -> dict[str, Any]:
    p50, p50_ratio = ours["single c=1"]["p50_ms"], ours["single c=1"]["p50_ms"] / theirs["single c=1"]["p50_ms"]
    best_c8 = max(
        (ours["single c=8"], ours["raw single c=8"], two["single c=8"], two["raw single c=8"]),
        key=lambda r: r["requests_per_s"],
    )
    rps_ratio = best_c8["requests_per_s"] / theirs["single c=8"]["requests_per_s"]
    batch = max(r["images_per_s"] for r in (ours["raw batch64 c=1"], ours["raw batch64 c=2"], two["raw batch64 c=2"]))
    out = {
        "benchmark": "serve",
        "processor": processor(),
        "cpus": os.cpu_count(),
        "model": "RandomForest 150 trees, depth 25 (the default config), @champion",
        "load_generator": "wrk 1 thread, 64 different bodies in turn",
        "same_answers": same,
        "mnistops": ours,
        "mnistops_workers_2": two,
        "mlflow_models_serve": theirs,
        "breakdown_ms": stages,
        "p50_ms_c1": p50,
        "p50_ratio_c1": round(p50_ratio, 4),
        "best_requests_per_s_c8": best_c8["requests_per_s"],
        "p99_ms_at_best_c8": best_c8["p99_ms"],
        "requests_per_s_ratio_c8": round(rps_ratio, 1),
        "json_requests_per_s_ratio_c8": round(
            ours["single c=8"]["requests_per_s"] / theirs["single c=8"]["requests_per_s"], 1
        ),
        "batch64_images_per_s": batch,
        "workers_2_over_1_c8": round(two["single c=8"]["requests_per_s"] / ours["single c=8"]["requests_per_s"], 2),
        "failures": sum(r["failures"] for res in (ours, theirs, two) for r in res.values()),
    }
    out["meets_targets"] = bool(
        same
        and out["failures"] == 0
        and p50 <= TARGET_P50_MS
        and p50_ratio <= TARGET_P50_RATIO
        and best_c8["requests_per_s"] >= TARGET_RPS
        and rps_ratio >= TARGET_RPS_RATIO
        and best_c8["p99_ms"] < TARGET_P99_MS
        and batch >= TARGET_BATCH_IMAGES_PER_S
    )
    return out


if __name__ == "__main__":
    main()
