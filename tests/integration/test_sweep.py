"""``mnistops sweep`` and notebook grids on a real Dask LocalCluster, against a real SQLite store.

The sweeps run on 10,000 real MNIST images (``digits10k``) with small forests. One test kills a
Dask worker in the middle of a trial (SIGKILL, the PID its run recorded) and checks that every
trial ends complete or failed-and-recorded, once.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import one_line_error, peek_store, read_store, run_cli

SPACE = """model: random_forest
params:
  n_estimators: {type: int, low: 30, high: 60, step: 10}
  max_depth: {type: int, low: 8, high: 16}
"""


@pytest.fixture
def space(store: Path) -> Path:
    f = store / "space.yaml"
    f.write_text(SPACE)
    return f


def _children(uri: str, parent: str) -> list[dict[str, str]]:
    out = read_store(
        uri,
        f"""
import json
from mlflow.tracking import MlflowClient
c = MlflowClient()
runs = c.search_runs([e.experiment_id for e in c.search_experiments()], "tags.`mlflow.parentRunId` = '{parent}'")
print(json.dumps([{{"run_id": r.info.run_id, "status": r.info.status, "params": r.data.params, **r.data.tags}}
                  for r in runs]))
""",
    )
    assert isinstance(out, list)
    return out


def _running_trial_pid(db: Path) -> int | None:
    """The worker PID of a trial run that is RUNNING now, read straight from the store."""
    row = peek_store(
        db,
        "select t.value from runs r join tags t on t.run_uuid = r.run_uuid join tags s on s.run_uuid = "
        "r.run_uuid where r.status = 'RUNNING' and t.key = 'mnistops.owner.pid' and "
        "s.key = 'mnistops.sweep.trial' limit 1",
    )
    return int(str(row[0])) if row else None


def test_a_worker_killed_mid_trial_leaves_every_trial_complete_or_failed_once(
    store: Path, space: Path, digits10k: Path
) -> None:
    uri = f"sqlite:///{store / 'mlflow.db'}"
    cmd = [
        sys.executable,
        "-m",
        "mnistops",
        "sweep",
        "--space",
        str(space),
        "--trials",
        "6",
        "--workers",
        "2",
        "--set",
        f"data.dataset={digits10k}",
        "--json",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=store)
    killed = None
    deadline = time.monotonic() + 240
    while killed is None and proc.poll() is None and time.monotonic() < deadline:
        pid = _running_trial_pid(store / "mlflow.db")
        if pid is not None and pid != proc.pid:
            os.kill(pid, signal.SIGKILL)
            killed = pid
        time.sleep(0.05)
    out, err = proc.communicate(timeout=600)
    assert killed is not None, "no trial was seen running"
    assert proc.returncode == 0, err[-3000:]
    result = json.loads(out)
    trials = result["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2, 3, 4, 5]
    assert {t["state"] for t in trials} <= {"COMPLETE", "FAIL"}
    lost = [t for t in trials if t["state"] == "FAIL"]
    assert len(lost) == 1 and lost[0]["error"] == "the Dask worker running it died (KilledWorker)", trials
    assert result["completed"] == 5 and result["failed"] == 1
    # MLflow: one run per trial, none RUNNING; the lost trial's run FAILED, saying why.
    children = _children(uri, result["run_id"])
    by_trial = {int(c["mnistops.sweep.trial"]): c for c in children}
    assert len(children) == 6 and sorted(by_trial) == [0, 1, 2, 3, 4, 5]
    for t in trials:
        run = by_trial[t["number"]]
        assert run["run_id"] == t["run_id"]
        assert run["status"] == ("FINISHED" if t["state"] == "COMPLETE" else "FAILED")
    dead = by_trial[lost[0]["number"]]
    assert dead["mnistops.owner.pid"] == str(killed)
    assert dead["mnistops.sweep.error"] == "the Dask worker running it died (KilledWorker)"
    assert f"process {killed} on" in dead["mnistops.ended_by"] or "its worker is gone" in dead["mnistops.ended_by"]
    # The data is loaded once per worker process: two at first, a third after the kill.
    fresh = [t for t in trials if t["state"] == "COMPLETE" and not t["data_reused"]]
    assert len(fresh) <= 3 and any(t["data_reused"] for t in trials)
    assert len({t["worker"] for t in trials if t["worker"]}) >= 2


def test_a_sweep_records_a_parent_with_its_space_and_best_so_far_and_promotes(
    store: Path, space: Path, digits10k: Path
) -> None:
    uri = f"sqlite:///{store / 'mlflow.db'}"
    proc = run_cli(
        "sweep",
        "--space",
        str(space),
        "--trials",
        "4",
        "--workers",
        "2",
        "--promote",
        "--json",
        "--set",
        f"data.dataset={digits10k}",
        "--set",
        "gate.floor=0.5",
        cwd=store,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["completed"] == 4, [t["error"] for t in result["trials"]]
    assert result["sampler"] == "TPESampler" and result["seed"] == 42
    values = [t["value"] for t in result["trials"]]
    assert result["best"]["value"] == max(values)
    assert result["promotion"]["promoted"] is True and result["model_version"] == "1"
    record = read_store(
        uri,
        f"""
import json
from mlflow.tracking import MlflowClient
c = MlflowClient()
run = c.get_run("{result["run_id"]}")
hist = [(m.step, m.value) for m in c.get_metric_history(run.info.run_id, "best_accuracy")]
champ = c.get_model_version_by_alias("mnist-classifier", "champion")
print(json.dumps({{"params": run.data.params, "tags": run.data.tags, "hist": hist, "status": run.info.status,
                   "champion_run": champ.run_id}}))
""",
    )
    assert isinstance(record, dict)
    assert record["status"] == "FINISHED" and record["tags"]["mnistops.run_type"] == "sweep"
    assert json.loads(record["params"]["sweep.space"])["n_estimators"] == {
        "type": "int",
        "low": 30,
        "high": 60,
        "step": 10,
        "log": False,
    }
    assert record["params"]["sweep.sampler"] == "TPESampler" and record["params"]["sweep.seed"] == "42"
    best_so_far = [max(values[: i + 1]) for i in range(4)]
    assert [v for _, v in sorted(record["hist"])] == pytest.approx(best_so_far)
    assert record["champion_run"] == result["best"]["run_id"]
    # Each worker ran its trials on its own share of the cores (half of them each, here), with
    # the forest's n_jobs to match.
    cpus = sorted(os.sched_getaffinity(0))
    children = _children(uri, result["run_id"])
    half = max(1, len(cpus) // 2)
    assert {c["mnistops.sweep.cores"] for c in children} == {str(half)}
    assert {c["params"]["model.params.n_jobs"] for c in children} == {str(half)}
    by_worker: dict[str, set[str]] = {}
    for c in children:
        by_worker.setdefault(c["mnistops.sweep.worker"], set()).add(c["mnistops.sweep.cpus"])
    assert all(len(sets) == 1 for sets in by_worker.values()), by_worker  # a worker keeps its cores
    pinned = [{int(x) for x in next(iter(sets)).split(",")} for sets in by_worker.values()]
    assert all(len(p) == half and p <= set(cpus) for p in pinned)
    if len(cpus) >= 2 and len(pinned) == 2:
        assert not pinned[0] & pinned[1], pinned  # the two workers never share a core
    # The same seed proposes the same trials again, on one worker of one core this time.
    again = run_cli(
        "sweep",
        "--space",
        str(space),
        "--trials",
        "2",
        "--workers",
        "1",
        "--trial-cores",
        "1",
        "--json",
        "--set",
        f"data.dataset={digits10k}",
        cwd=store,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads(again.stdout)
    first_two = [t["params"] for t in second["trials"]][:2]
    assert first_two == [t["params"] for t in result["trials"]][:2]
    one_core = _children(uri, second["run_id"])
    assert {(c["mnistops.sweep.cores"], c["mnistops.sweep.cpus"]) for c in one_core} == {("1", str(cpus[0]))}


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--scheduler", "tcp://127.0.0.1:9"], {}, "error: cannot reach the Dask scheduler at tcp://127.0.0.1:9"),
        (["--scheduler", "127.0.0.1"], {}, "is not a Dask scheduler address: write tcp://HOST:PORT"),
        (
            [],
            {"MLFLOW_TRACKING_URI": "postgresql://postgres@127.0.0.1:9/mlflow"},
            "error: cannot reach postgresql at 127.0.0.1:9",
        ),
        (["--set", "model.params.n_jobs=two"], {}, "error: config key model.params.n_jobs"),
        (["--workers", "0"], {}, "error: --workers 0: give at least 1 worker"),
        (["--trial-cores", "0"], {}, "error: --trial-cores 0: give 1 to"),
        (["--trial-cores", "999"], {}, "error: --trial-cores 999: give 1 to"),
    ],
    ids=[
        "scheduler-closed",
        "scheduler-malformed",
        "database-unreachable",
        "bad-base-config",
        "no-workers",
        "no-cores",
        "too-many-cores",
    ],
)
def test_bad_input_is_one_line_and_leaves_no_run(
    store: Path, space: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    proc = run_cli("sweep", "--space", str(space), "--trials", "2", *args, env=env, cwd=store)
    line = one_line_error(proc)
    assert proc.returncode == 2
    assert message in line, line
    db = store / "mlflow.db"
    if db.exists():
        with sqlite3.connect(db) as con:
            assert con.execute("select count(*) from runs").fetchone()[0] == 0


def test_a_space_with_a_parameter_the_model_refuses_is_one_line(store: Path) -> None:
    f = store / "space.yaml"
    f.write_text("model: random_forest\nparams:\n  learning_rate: {type: float, low: 0.01, high: 0.3}\n")
    line = one_line_error(run_cli("sweep", "--space", str(f), "--trials", "2", cwd=store))
    assert line.startswith(f"error: search space {f}: random_forest has no parameter 'learning_rate'")
    assert not (store / "mlflow.db").exists()
    missing = one_line_error(run_cli("sweep", "--trials", "2", "--set", "model.name=cnn", cwd=store))
    assert missing == f"error: no search space for cnn at {store / 'configs' / 'space' / 'cnn.yaml'}: pass --space FILE"


def test_a_trial_that_crashes_is_failed_and_the_sweep_goes_on(store: Path, digits10k: Path) -> None:
    # max_features 0.0 passes the parameter model (a float) but scikit-learn refuses it at fit time.
    f = store / "space.yaml"
    f.write_text(
        "model: random_forest\nparams:\n  n_estimators: {type: int, low: 5, high: 10}\n"
        "  max_features: {type: categorical, choices: [0.0, sqrt]}\n"
    )
    proc = run_cli(
        "sweep",
        "--space",
        str(f),
        "--trials",
        "6",
        "--workers",
        "2",
        "--json",
        "--sampler",
        "random",
        "--set",
        f"data.dataset={digits10k}",
        cwd=store,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    failed = [t for t in result["trials"] if t["state"] == "FAIL"]
    done = [t for t in result["trials"] if t["state"] == "COMPLETE"]
    assert failed and done, result["trials"]
    assert all(t["params"]["max_features"] == 0.0 for t in failed)
    assert all(t["params"]["max_features"] == "sqrt" for t in done)
    assert all("max_features" in t["error"] for t in failed), failed
    children = _children(f"sqlite:///{store / 'mlflow.db'}", result["run_id"])
    assert sorted(c["status"] for c in children) == sorted(
        "FAILED" if t["state"] == "FAIL" else "FINISHED" for t in result["trials"]
    )
    assert all(
        c["mnistops.sweep.error"].startswith("InvalidParameterError") for c in children if c["status"] == "FAILED"
    )


ROOT = Path(__file__).resolve().parents[2]


def test_a_notebook_grid_runs_each_point_as_a_child_batch_and_a_bad_point_fails_alone(
    store: Path, digits10k: Path
) -> None:
    uri = f"sqlite:///{store / 'mlflow.db'}"
    grid = store / "grid.yaml"
    grid.write_text("n_estimators: [4, 6]\nmax_depth: [6, 8]\n")
    base = [
        sys.executable,
        str(ROOT / "run_notebooks.py"),
        "--only",
        "02,03",
        "--out",
        str(store / "outputs"),
        "-p",
        "dataset",
        str(digits10k),
        "--workers",
        "2",
        "--jobs",
        "2",
        "--json",
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    proc = subprocess.run(
        [*base, "--grid", str(grid)], capture_output=True, text=True, env=env, cwd=store, timeout=900, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["status"] == "FINISHED" and len(result["points"]) == 4
    assert [p["params"] for p in result["points"]] == [
        {"n_estimators": n, "max_depth": d} for n in (4, 6) for d in (6, 8)
    ]
    children = {c["run_id"]: c for c in _children(uri, result["run_id"])}
    assert len(children) == 4
    for point in result["points"]:
        assert point["status"] == "FINISHED" and point["metrics"]["accuracy"] > 0.5
        assert children[point["run_id"]]["mnistops.grid.point"] == str(point["point"])
        assert children[point["run_id"]]["mnistops.batch.jobs"] == "2"  # --jobs reaches each point's batch
        copies = Path(point["out_dir"])
        assert sorted(p.name for p in copies.glob("*.ipynb")) == ["02_validate.ipynb", "03_train.ipynb"]
        import nbformat

        nb = nbformat.read(copies / "03_train.ipynb", as_version=4)
        injected = "".join(c.source for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
        assert f"n_estimators = {point['params']['n_estimators']}" in injected
    assert len({p["metrics"]["accuracy"] for p in result["points"]}) > 1  # the points differ

    bad = store / "bad.yaml"
    bad.write_text("n_estimators: [4]\nmax_depth: [6, -3]\n")
    proc = subprocess.run(
        [*base, "--grid", str(bad)], capture_output=True, text=True, env=env, cwd=store, timeout=900, check=False
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    ok, failed = result["points"]
    assert result["status"] == "FAILED"
    assert ok["status"] == "FINISHED" and failed["status"] == "FAILED"
    assert "notebook 03_train failed at cell" in failed["error"] and "max_depth" in failed["error"]
    assert (Path(failed["out_dir"]) / "03_train.ipynb").exists()  # the partly executed copy, kept
    children = {c["run_id"]: c["status"] for c in _children(uri, result["run_id"])}
    assert children == {ok["run_id"]: "FINISHED", failed["run_id"]: "FAILED"}
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert line and line[0].startswith("error: 1 of 2 grid points failed; point 1 (n_estimators=4, max_depth=-3)")


def test_a_grid_naming_a_parameter_no_notebook_declares_is_refused_before_anything_runs(store: Path) -> None:
    grid = store / "grid.yaml"
    grid.write_text("n_trees: [4, 6]\n")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run_notebooks.py"), "--grid", str(grid)],
        capture_output=True,
        text=True,
        cwd=store,
        timeout=120,
        check=False,
    )
    line = one_line_error(proc)
    assert proc.returncode == 2
    assert line.startswith(f"error: --grid {grid}: n_trees: no notebook of this batch declares it")
    assert not (store / "mlflow.db").exists()


def test_sigterm_stops_the_sweep_its_workers_and_every_run(store: Path, space: Path, digits10k: Path) -> None:
    import psutil

    cmd = [
        sys.executable,
        "-m",
        "mnistops",
        "sweep",
        "--space",
        str(space),
        "--trials",
        "6",
        "--workers",
        "2",
        "--set",
        f"data.dataset={digits10k}",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=store)
    deadline = time.monotonic() + 240
    while proc.poll() is None and _running_trial_pid(store / "mlflow.db") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    family = psutil.Process(proc.pid).children(recursive=True)
    assert family, "no worker processes"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert err.rstrip().endswith("terminated"), err[-2000:]
    _, alive = psutil.wait_procs(family, timeout=30)
    assert alive == [], [p.cmdline() for p in alive]
    with sqlite3.connect(store / "mlflow.db") as con:
        statuses = dict(con.execute("select name, status from runs").fetchall())
    assert statuses["sweep-random_forest"] == "KILLED"
    assert "RUNNING" not in statuses.values(), statuses
