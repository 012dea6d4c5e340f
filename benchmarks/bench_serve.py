"""`mnistops serve` against `mlflow models serve` of the same RandomForest champion, same run.

A fresh store gets the default RandomForest (150 trees, depth 25) trained and promoted; then each
server in turn is started on 127.0.0.1 and a free port, warmed up, and loaded over loopback with
real MNIST test images, bounded by count and time:

* ``single c=1``: one image per request, one client;
* ``single c=8``: one image per request, eight clients at once;
* ``batch64 c=1``: 64 images per request, one client.

Each line reports p50 and p99 latency (ms), requests/s and images/s. Both servers get the same
JSON body for the same images (``{"images": [...]}`` for mnistops, ``{"inputs": [...]}`` for
MLflow's scoring server) from the same client code (httpx, one keep-alive connection per
client). Targets: p50 at c=1 no slower than MLflow's, and at least 3x its throughput at c=8.
Prints one JSON line.

Usage: python benchmarks/bench_serve.py [--requests N] [--seconds S]
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
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_notebooks import processor
from mnistops.serve.launch import free_port

TARGET_P50_RATIO = 1.0  # mnistops p50 / mlflow p50 at c=1: no slower
TARGET_THROUGHPUT_RATIO = 3.0  # mnistops requests/s / mlflow requests/s at c=8
SCENARIOS = (("single c=1", 1, 1), ("single c=8", 1, 8), ("batch64 c=1", 64, 1))


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


def start(kind: str, work: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
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


def body(kind: str, images: np.ndarray) -> bytes:
    key = "images" if kind == "mnistops" else "inputs"
    return json.dumps({key: images.tolist()}).encode()


def load(
    kind: str, url: str, images: np.ndarray, per_request: int, clients: int, requests: int, seconds: float
) -> dict[str, Any]:
    """``requests`` requests of ``per_request`` images from ``clients`` clients at once, or as
    many as fit in ``seconds``; latency of each, failures counted."""
    import httpx

    path = "/predict" if kind == "mnistops" else "/invocations"
    bodies = [body(kind, images[i : i + per_request]) for i in range(0, 64 * per_request, per_request)]
    latencies: list[float] = []
    failures = [0]
    counter = iter(range(requests))
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            while time.monotonic() < deadline:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                r = http.post(path, content=bodies[i % len(bodies)], headers={"Content-Type": "application/json"})
                elapsed = time.perf_counter() - t0
                with lock:
                    latencies.append(elapsed)
                    failures[0] += r.status_code != 200

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies),
        "failures": failures[0],
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "requests_per_s": round(len(latencies) / wall, 1),
        "images_per_s": round(len(latencies) * per_request / wall, 1),
    }


def check_same_answers(kind: str, url: str, images: np.ndarray) -> list[int]:
    import httpx

    path = "/predict" if kind == "mnistops" else "/invocations"
    r = httpx.post(url + path, content=body(kind, images), headers={"Content-Type": "application/json"}, timeout=60)
    r.raise_for_status()
    answer = r.json()
    if kind == "mnistops":
        return [p["label"] for p in answer["predictions"]]
    return [row["label"] for row in answer["predictions"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per scenario at most")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per scenario at most")
    args = parser.parse_args()

    from mnistops.data import sources

    ds = sources.load("mnist")
    images = ds.images[-64 * 64 :]
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "MLFLOW_DISABLE_TELEMETRY": "true"}
    results: dict[str, dict[str, Any]] = {}
    labels: dict[str, list[int]] = {}
    try:
        train_champion(work, env)
        for kind in ("mlflow", "mnistops"):
            process, url = start(kind, work, env)
            try:
                labels[kind] = check_same_answers(kind, url, images[:64])
                load(kind, url, images, 1, 2, 40, 10)  # warm-up
                results[kind] = {}
                for name, per, clients in SCENARIOS:
                    count = args.requests if per == 1 else args.requests // 8
                    results[kind][name] = load(kind, url, images, per, clients, count, args.seconds)
            finally:
                stop(process)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ours, theirs = results["mnistops"], results["mlflow"]
    p50_ratio = ours["single c=1"]["p50_ms"] / theirs["single c=1"]["p50_ms"]
    throughput_ratio = ours["single c=8"]["requests_per_s"] / theirs["single c=8"]["requests_per_s"]
    out = {
        "benchmark": "serve",
        "processor": processor(),
        "cpus": os.cpu_count(),
        "model": "RandomForest 150 trees, depth 25 (the default config), @champion",
        "same_answers": labels["mnistops"] == labels["mlflow"],
        "mnistops": ours,
        "mlflow_models_serve": theirs,
        "p50_ratio_c1": round(p50_ratio, 3),
        "throughput_ratio_c8": round(throughput_ratio, 2),
        "batch64_throughput_ratio": round(
            ours["batch64 c=1"]["images_per_s"] / theirs["batch64 c=1"]["images_per_s"], 2
        ),
        "target_p50_ratio_c1": TARGET_P50_RATIO,
        "target_throughput_ratio_c8": TARGET_THROUGHPUT_RATIO,
        "failures": sum(r["failures"] for res in results.values() for r in res.values()),
    }
    out["meets_targets"] = bool(
        out["same_answers"]
        and out["failures"] == 0
        and p50_ratio <= TARGET_P50_RATIO
        and throughput_ratio >= TARGET_THROUGHPUT_RATIO
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
