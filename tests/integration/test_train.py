"""`mnistops train` end to end: real MNIST, a real SQLite MLflow store, fresh processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnistops.data import sources
from mnistops.data.dataset import Dataset
from support import SeedStore, one_line_error, read_store, run_cli

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--set", "model.params.n_estimators=8", "--set", "model.params.max_depth=8"]

READBACK = """
import json, mlflow
from mlflow.tracking import MlflowClient
c = MlflowClient()
run = c.get_run({run_id!r})
def walk(path=None):
    out = []
    for f in c.list_artifacts(run.info.run_id, path):
        out += walk(f.path) if f.is_dir else [f.path]
    return out
inputs = [{{"name": d.dataset.name, "digest": d.dataset.digest, "source": d.dataset.source,
            "tags": {{t.key: t.value for t in d.tags}}}} for d in run.inputs.dataset_inputs]
models = [o.model_id for o in (run.outputs.model_outputs if run.outputs else [])]
curve = [(m.step, m.value) for m in c.get_metric_history(run.info.run_id, "held_out_accuracy")]
print(json.dumps({{"status": run.info.status, "params": run.data.params, "metrics": run.data.metrics,
                  "tags": run.data.tags, "artifacts": walk(), "inputs": inputs, "models": models,
                  "curve": sorted(curve)}}))
"""


def readback(store: Path, run_id: str) -> dict[str, Any]:
    return read_store(os.environ["MLFLOW_TRACKING_URI"], READBACK.format(run_id=run_id))  # type: ignore[return-value]


def train_json(*args: str, cwd: Path | None = None) -> dict[str, Any]:
    proc = run_cli("train", "--json", *args, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


@pytest.fixture
def seed_run(seed_store: SeedStore) -> tuple[Path, dict[str, Any]]:
    """The notebook's logged run (120 trees, depth 20), trained through the CLI (in the store the
    notebook batch trained it in first: ``seed_store``)."""
    return seed_store.work, seed_store.train


@pytest.mark.slow
@pytest.mark.xdist_group("seed")
def test_seed_config_matches_the_notebooks_logged_result(seed_run: tuple[Path, dict[str, Any]]) -> None:
    _, result = seed_run
    assert abs(result["metrics"]["accuracy"] - 0.9669) <= 0.001
    assert abs(result["metrics"]["f1_macro"] - 0.9666) <= 0.001
    assert set(result) >= {
        "run_id",
        "experiment",
        "model_uri",
        "metrics",
        "data_fingerprint",
        "split_fingerprint",
        "config_hash",
        "durations",
    }
    assert result["data_fingerprint"] == sources.MNIST_FINGERPRINT
    assert set(result["durations"]) == {
        "time_load_s",
        "time_validate_s",
        "time_split_s",
        "time_reference_s",
        "time_fit_s",
        "time_evaluate_s",
        "time_log_model_s",
        "time_total_s",
    }


@pytest.mark.slow
@pytest.mark.xdist_group("seed")
def test_run_reads_back_with_everything_recorded(
    seed_run: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    work, result = seed_run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    run = readback(work, result["run_id"])
    assert run["status"] == "FINISHED"
    params = run["params"]
    assert params["model.name"] == "random_forest" and params["model.params.n_estimators"] == "120"
    assert params["model.params.max_depth"] == "20" and params["split.test_size"] == "0.2"
    assert params["seed"] == "42" and params["data.dataset"] == "mnist" and params["split.strategy"] == "stratified"
    metrics = run["metrics"]
    for key in (
        "accuracy",
        "f1_macro",
        "f1_weighted",
        "log_loss",
        "precision_macro",
        "recall_macro",
        "time_load_s",
        "time_validate_s",
        "time_fit_s",
        "time_evaluate_s",
        "time_log_model_s",
        "time_total_s",
        "peak_rss_mb",
        *(f"{m}_{c}" for m in ("precision", "recall", "f1") for c in range(10)),
    ):
        assert key in metrics, key
    assert metrics["accuracy"] == pytest.approx(result["metrics"]["accuracy"])
    assert 0 < metrics["time_fit_s"] < metrics["time_total_s"] and metrics["peak_rss_mb"] > 100
    # The forest scored the held-out rows after each batch of 12 trees; the last point is the run's.
    assert [step for step, _ in run["curve"]] == list(range(12, 121, 12))
    assert run["curve"][-1][1] == pytest.approx(metrics["accuracy"], abs=1e-12)
    tags = run["tags"]
    assert tags["mnistops.data_fingerprint"] == sources.MNIST_FINGERPRINT
    assert tags["mnistops.split_fingerprint"] == result["split_fingerprint"]
    assert tags["mnistops.config_hash"] == result["config_hash"]
    assert tags["mnistops.version"] and tags["env.python"] and tags["env.os"] and int(tags["env.cpu_count"]) >= 1
    for pkg in ("numpy", "scikit-learn", "mlflow", "pandas", "joblib"):
        assert tags[f"env.pkg.{pkg}"], pkg
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    if head.returncode == 0:
        assert tags["git.code.commit"] == head.stdout.strip()
        assert tags["git.code.dirty"] in ("true", "false") and tags["git.code.branch"]
        assert ("code/code.diff" in run["artifacts"]) == (tags["git.code.dirty"] == "true")
    for artifact in (
        "config.yaml",
        "environment/requirements.lock.txt",
        "environment/environment.json",
        "data/validation.json",
        "data/split.json",
        "metrics.json",
        "confusion_matrix.json",
        "classification_report.txt",
        "plots/confusion_matrix.png",
        "plots/confident_mistakes.png",
        "predictions/predictions.npz",
        "run.log",
    ):
        assert artifact in run["artifacts"], artifact
    (dataset,) = run["inputs"]
    assert dataset["name"] == "mnist" and dataset["digest"] == sources.MNIST_FINGERPRINT[:36]
    assert dataset["tags"]["fingerprint"] == sources.MNIST_FINGERPRINT
    assert dataset["tags"]["split_fingerprint"] == result["split_fingerprint"]
    assert run["models"] == [result["model_uri"].removeprefix("models:/")]


PREDICT = """
import sys, json
sys.modules["mnistops"] = None  # stock MLflow only: importing mnistops would fail
import numpy as np, mlflow, mlflow.pyfunc
model = mlflow.pyfunc.load_model({uri!r})
x = np.load({x!r})
out = model.predict(x)
print(json.dumps({{"labels": out["label"].tolist(), "p_sum": float(out.filter(like="prob_").to_numpy().sum()),
                  "columns": list(out.columns), "input": str(model.metadata.get_input_schema()),
                  "example": model.metadata.saved_input_example_info is not None}}))
"""


@pytest.mark.slow
@pytest.mark.xdist_group("seed")
def test_model_loads_with_stock_mlflow_in_a_fresh_process(
    seed_run: tuple[Path, dict[str, Any]], mnist: Dataset, tmp_path: Path
) -> None:
    work, result = seed_run
    from mnistops.data.split import make_split

    split = make_split(mnist, "stratified", 0.2, 42)
    np.save(tmp_path / "x.npy", mnist.features(split.test))
    out: Any = read_store(
        f"sqlite:///{work / 'mlflow.db'}",
        PREDICT.format(uri=result["model_uri"], x=str(tmp_path / "x.npy")),
        fresh=True,  # stock MLflow only
    )
    accuracy = float(np.mean(np.array(out["labels"]) == mnist.labels[split.test]))
    assert accuracy == pytest.approx(result["metrics"]["accuracy"], abs=1e-12)
    assert out["columns"] == ["label", *(f"prob_{i}" for i in range(10))]
    assert out["p_sum"] == pytest.approx(len(split.test))
    assert "object" in out["input"] and out["example"]  # any array: the model checks shape, type and range


@pytest.mark.slow
@pytest.mark.xdist_group("seed")
def test_model_artifact_is_compact(seed_run: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    work, result = seed_run
    import mlflow

    location = (
        mlflow.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
        .get_logged_model(result["model_uri"].removeprefix("models:/"))
        .artifact_location
    )
    size = sum(p.stat().st_size for p in Path(location.removeprefix("file://")).rglob("*") if p.is_file())
    assert size <= 0.2 * 153_000_000  # the notebook's artifact for the same forest: 153 MB


def test_same_config_twice_gives_identical_metrics_and_predictions(store: Path, small_mnist: Path) -> None:
    a = train_json(*SMALL)
    b = train_json(*SMALL, "--force")  # a clean tree would otherwise hit the run cache
    assert a["run_id"] != b["run_id"]
    timing = {k for k in a["metrics"] if k.startswith("time_") or k == "peak_rss_mb"}
    assert {k: v for k, v in a["metrics"].items() if k not in timing} == {
        k: v for k, v in b["metrics"].items() if k not in timing
    }
    import mlflow

    preds = []
    for r in (a, b):
        path = mlflow.artifacts.download_artifacts(
            run_id=r["run_id"], artifact_path="predictions/predictions.npz", dst_path=str(store / r["run_id"])
        )
        with np.load(path) as z:
            preds.append((z["label"], z["proba"]))
    np.testing.assert_array_equal(preds[0][0], preds[1][0])
    np.testing.assert_array_equal(preds[0][1], preds[1][1])


def test_workdir_repository_is_traced_too(store: Path, small_mnist: Path) -> None:
    subprocess.run(["git", "init", "-q"], cwd=store, check=True)
    (store / "exp.yaml").write_text("model:\n  params:\n    n_estimators: 4\n    max_depth: 4\n")
    (store / ".gitignore").write_text("mlflow.db\nmlruns/\n")
    subprocess.run(["git", "add", "."], cwd=store, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"], cwd=store, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=store, capture_output=True, text=True).stdout.strip()
    result = train_json("--config", "exp.yaml")
    tags = readback(store, result["run_id"])["tags"]
    assert tags["git.workdir.commit"] == head and tags["git.workdir.dirty"] == "false"
    (store / "exp.yaml").write_text("model:\n  params:\n    n_estimators: 5\n    max_depth: 4\n")
    run = readback(store, train_json("--config", "exp.yaml")["run_id"])
    assert run["tags"]["git.workdir.dirty"] == "true" and "code/workdir.diff" in run["artifacts"]


def _runs(store: Path) -> list[tuple[str, str]]:
    if not (store / "mlflow.db").exists():
        return []
    script = (
        "import json; from mlflow.tracking import MlflowClient; c = MlflowClient(); "
        "print(json.dumps([(r.info.run_id, r.info.status) for e in c.search_experiments() "
        "for r in c.search_runs([e.experiment_id])]))"
    )
    return [tuple(r) for r in read_store(os.environ["MLFLOW_TRACKING_URI"], script)]  # type: ignore[union-attr, misc]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--set", "model.n_trees=3"],
            "unknown config key model.n_trees (from --set model.n_trees=3): allowed keys here are name, params",
        ),
        (
            ["--set", "model.params.max_depth=deep"],
            "config key model.params.max_depth (from --set model.params.max_depth=deep): Input should be a valid int",
        ),
        (
            ["--set", "split.test_size=-0.1"],
            "config key split.test_size (from --set split.test_size=-0.1): Input should be greater than 0",
        ),
        (
            ["--set", "model.name=svm"],
            "config key model.name (from --set model.name=svm): Input should be 'random_forest'",
        ),
    ],
    ids=["unknown-key", "wrong-type", "negative-test-size", "unknown-model"],
)
def test_bad_config_is_one_line_and_leaves_no_run(store: Path, args: list[str], message: str) -> None:
    line = one_line_error(run_cli("train", *args))
    assert message in line
    assert _runs(store) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_tracking_uri_is_one_line(store: Path) -> None:
    uri = f"http://127.0.0.1:{_free_port()}"
    line = one_line_error(run_cli("train", *SMALL, env={"MLFLOW_TRACKING_URI": uri}))
    assert f"cannot reach the MLflow server at {uri}" in line
    line = one_line_error(run_cli("train", *SMALL, env={"MLFLOW_TRACKING_URI": "sqlite:////nonexistent/dir/m.db"}))
    assert "folder /nonexistent/dir does not exist" in line


def test_sigterm_mid_fit_leaves_the_run_killed(store: Path, small_mnist: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "mnistops",
        "-v",
        "train",
        "--set",
        "model.params.n_estimators=2000",
        "--set",
        "model.params.max_depth=30",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    for line in proc.stderr:
        if "stage fit started" in line or time.monotonic() > deadline:
            break
    time.sleep(1.0)  # well inside the fit: 2,000 deep trees take minutes
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    ((run_id, status),) = _runs(store)
    assert status == "KILLED"
    run = readback(store, run_id)
    assert run["params"]["model.params.n_estimators"] == "2000"  # what was logged before stays
    assert "config.yaml" in run["artifacts"] and "run.log" in run["artifacts"]


def test_exception_mid_run_leaves_the_run_failed(
    store: Path, monkeypatch: pytest.MonkeyPatch, small_mnist: Path
) -> None:
    from mnistops import pipeline
    from mnistops.config import load_config
    from mnistops.train import models

    def boom(self: object, *args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(models.SklearnModel, "fit", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        pipeline.train(load_config(overrides=["model.params.n_estimators=3"]))
    import mlflow

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    ((run_id, status),) = _runs(store)
    assert status == "FAILED"
    log = Path(
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="run.log", dst_path=str(store))
    ).read_text()
    assert "disk full" in log


@pytest.mark.slow
@pytest.mark.xdist_group("seed")
def test_the_experiment_opens_as_a_model_training_project(seed_run: tuple[Path, dict[str, Any]]) -> None:
    """MLflow 3.17's UI opens an experiment without ``mlflow.experimentKind`` as GenAI evaluation
    runs (the notebook batch listed as an evaluation); mnistops tags the experiments it creates."""
    work, result = seed_run
    from mlflow.tracking import MlflowClient

    experiment = MlflowClient(f"sqlite:///{work / 'mlflow.db'}").get_experiment_by_name(result["experiment"])
    assert experiment is not None and experiment.tags["mlflow.experimentKind"] == "classification"


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.slow
@pytest.mark.xdist_group("seed")
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (.ci/run does)")
def test_mlflow_ui_opens_the_batch_in_its_model_training_view(seed_store: SeedStore, tmp_path: Path) -> None:
    """The store a notebook batch filled, served by the real ``mlflow server`` and opened in
    Chromium at the link mnistops prints: MLflow's Model training view, with the batch's runs."""
    from playwright.sync_api import sync_playwright

    from mnistops.tracking import store
    from mnistops.tracking.server import wait_ready

    uri = f"sqlite:///{seed_store.work / 'mlflow.db'}"
    hint = store.ui_hint(uri, seed_store.batch["experiment"])
    assert hint.startswith(
        f"open the UI: mlflow ui --backend-store-uri {uri}, then http://127.0.0.1:5000/#/experiments/"
    )
    page_path = hint.split("http://127.0.0.1:5000/", 1)[1]
    assert page_path.endswith("?workflowType=machine_learning")
    # The top-level runs (the batch's training run is its child, folded under it in the table).
    names = sorted(
        {r["tags"]["mlflow.runName"] for r in seed_store.batch_runs if "mlflow.parentRunId" not in r["tags"]}
    )
    assert names
    port = _free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "TMPDIR": str(tmp_path)}
    server = subprocess.Popen(command, cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, server, 120)  # /health, as for mnistops' own tracking server
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(f"{base}/{page_path}")
            for name in names:  # the runs table, every run of the batch on it
                page.wait_for_selector(f"text={name}", timeout=60_000)
            shown = page.inner_text("body")
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    assert "Model registry" in shown and "matching run" in shown  # Model training: runs and models
    assert "Token Usage" not in shown and "Tool calls" not in shown  # not the GenAI overview
    assert all(url.startswith(base) for url in requests), [u for u in requests if not u.startswith(base)][:5]
