"""Faults and mistakes, through the real CLI: each a one-line error, a non-zero exit, nothing lost,
nothing left RUNNING, nothing created that nobody asked for."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnistops.data.dataset import Dataset
from support import one_line_error, read_store, run_cli

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--set", "model.params.n_estimators=4", "--set", "model.params.max_depth=6"]
# Root may write anywhere; without CAP_DAC_OVERRIDE it obeys file modes like anyone else.
NO_OVERRIDE = (
    ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps", "-dac_override,-dac_read_search"]
    if os.geteuid() == 0
    else []
)

RUNS = """
import json
from mlflow.tracking import MlflowClient
c = MlflowClient()
print(json.dumps([{"id": r.info.run_id, "status": r.info.status, "tags": r.data.tags}
                  for e in c.search_experiments() for r in c.search_runs([e.experiment_id])]))
"""


def runs(folder: Path) -> list[dict[str, Any]]:
    return read_store(f"sqlite:///{folder / 'mlflow.db'}", RUNS)  # type: ignore[return-value]


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, wrap: list[str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **(env or {})}  # the autouse fixture has unset MLFLOW_TRACKING_URI: cwd's store
    return subprocess.run(
        [*(wrap or []), sys.executable, "-m", "mnistops", *args],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the socket goes


# --- stores ------------------------------------------------------------------------------


def test_an_unreachable_postgresql_store_is_one_line_at_once(tmp_path: Path) -> None:
    pytest.importorskip("psycopg")  # the driver is installed: the server is what is missing
    uri = f"postgresql://nobody@127.0.0.1:{_closed_port()}/x"
    started = time.monotonic()
    proc = cli("train", *SMALL, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    elapsed = time.monotonic() - started
    line = one_line_error(proc)
    assert proc.returncode == 2
    assert line.startswith(f"error: cannot reach postgresql at 127.0.0.1:{uri.split(':')[-1].split('/')[0]}")
    assert "connection refused" in line and "MLFLOW_TRACKING_URI" in line
    assert "SQLAlchemy engine could not be created" not in proc.stderr  # MLflow's retry loop never started
    assert elapsed < 60, f"took {elapsed:.0f} s (MLflow's own retries take about 100 s)"
    assert list(tmp_path.iterdir()) == []


def test_a_missing_driver_names_the_pip_install(tmp_path: Path) -> None:
    proc = cli("runs", "list", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": "mysql://u@127.0.0.1:1/db"})
    assert "the mysql driver (MySQLdb) is not installed: pip install 'mysqlclient'" in one_line_error(proc)


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None, reason="needs setpriv to act as non-root")
def test_a_read_only_working_folder_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        line = one_line_error(cli("train", *SMALL, cwd=folder, wrap=NO_OVERRIDE))
        assert f"cannot create mlflow.db in {folder}, a read-only folder" in line
        line = one_line_error(cli("data", "export", "x.npz", cwd=folder, wrap=NO_OVERRIDE))
        assert line == "error: cannot write x.npz: Permission denied; choose a folder you can write to"
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


def test_export_to_a_missing_folder_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "dir" / "out.npz"
    line = one_line_error(cli("data", "export", str(target), cwd=tmp_path))
    assert (
        line
        == f"error: cannot write {target}: folder {target.parent} does not exist; create it, or choose another path"
    )
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize(
    "command",
    [["runs", "list"], ["promote", "--latest"], ["rollback"], ["runs", "compare", "abc", "def"], ["reproduce", "abc"]],
)
def test_commands_that_read_never_create_a_store(tmp_path: Path, command: list[str]) -> None:
    line = one_line_error(cli(*command, cwd=tmp_path))
    assert line.startswith(f"error: no tracking store at {tmp_path / 'mlflow.db'} (looked in {tmp_path})")
    assert list(tmp_path.iterdir()) == []


def test_four_trainings_at_once_on_a_new_folder_all_succeed(tmp_path: Path, small_mnist: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mnistops", "train", "--json", *SMALL, "--set", f"seed={i}"],
            cwd=tmp_path,
            env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [err[-2000:] for _, err in outs]
    versions = sorted(int(json.loads(out)["model_version"]) for out, _ in outs)
    assert versions == [1, 2, 3, 4]
    assert sorted(r["status"] for r in runs(tmp_path)) == ["FINISHED"] * 4


RACER = """
import mlflow, numpy as np
from mlflow.data.numpy_dataset import from_numpy
mlflow.set_experiment("race")
with mlflow.start_run() as run:
    mlflow.log_input(from_numpy(np.arange(8.0), name="digits", digest="d1"), context="training")
print(f'"{run.info.run_id}"')
"""


def test_a_run_that_loses_the_race_to_insert_a_new_dataset_still_logs_it(store: Path) -> None:
    # MLflow looks a dataset up in the experiment, then inserts it if new. Here a second writer,
    # a real process, logs the same new dataset between this run's look-up and its insert: what
    # the first trials of a sweep do by chance (the CI failure of 2026-11-28).
    import sqlite3

    import mlflow
    from mlflow.data.numpy_dataset import from_numpy
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from mnistops.tracking import store as tracking

    uri = f"sqlite:///{store / 'mlflow.db'}"
    other: list[object] = []

    def insert_first(conn: object, cursor: object, statement: str, *rest: object) -> None:
        if statement.startswith("INSERT INTO datasets") and not other:
            other.append(read_store(uri, RACER, fresh=True))

    mlflow.set_experiment("race")
    event.listen(Engine, "before_cursor_execute", insert_first)
    try:
        with mlflow.start_run() as run:
            tracking.log_dataset(from_numpy(np.arange(8.0), name="digits", digest="d1"), "training", {"k": "v"})
    finally:
        event.remove(Engine, "before_cursor_execute", insert_first)
    assert len(other) == 1 and other[0] != run.info.run_id
    with sqlite3.connect(store / "mlflow.db") as con:
        datasets = con.execute("select dataset_uuid, name, digest from datasets").fetchall()
        linked = con.execute("select destination_id, source_id from inputs where source_type = 'DATASET'").fetchall()
    assert len(datasets) == 1 and datasets[0][1:] == ("digits", "d1")
    assert sorted(linked) == sorted([(run.info.run_id, datasets[0][0]), (other[0], datasets[0][0])])
    tags = {t.key: t.value for t in mlflow.get_run(run.info.run_id).inputs.dataset_inputs[0].tags}
    assert tags == {"mlflow.data.context": "training", "k": "v"}


# --- runs left behind ------------------------------------------------------------------


def test_a_training_killed_with_sigkill_is_ended_failed_by_the_next_command(tmp_path: Path, small_mnist: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, "-m", "mnistops", "-v", "train", "--set", "model.params.n_estimators=3000"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 240
    for line in proc.stderr:
        if "stage fit started" in line or time.monotonic() > deadline:
            break
    time.sleep(1.0)
    leftovers = list(Path(tempfile.gettempdir()).glob(f"mnistops-{proc.pid}-*"))
    assert leftovers, "a running training keeps its log in a folder named after its process"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    (run,) = runs(tmp_path)
    assert run["status"] == "RUNNING"  # nothing could end it
    listed = cli("runs", "list", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    warning = " ".join(listed.stderr.split())
    assert f"run {run['id']} was left RUNNING by process {proc.pid}, which is gone: marked FAILED" in warning
    (row,) = json.loads(listed.stdout)
    assert row["status"] == "FAILED" and f"process {proc.pid}" in row["ended_by"]
    assert [p for p in leftovers if p.exists()] == []  # its temporary folder went too
    assert "✗" in cli("runs", "list", cwd=tmp_path).stdout  # and the table marks it


def test_a_running_run_of_a_live_process_is_left_alone(tmp_path: Path) -> None:
    script = f"""
import mlflow, time
from mnistops.tracking import store
mlflow.set_tracking_uri("sqlite:///{tmp_path / "mlflow.db"}")
with store.tracked_run(mlflow.get_tracking_uri(), "mnistops", "long", {{}}):
    print("started", flush=True)
    time.sleep(120)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
        assert cli("runs", "list", cwd=tmp_path).returncode == 0
        assert [r["status"] for r in runs(tmp_path)] == ["RUNNING"]
    finally:
        proc.kill()  # a plain script has no SIGTERM handler either: nothing ends its run
        proc.wait(timeout=30)
    assert [r["status"] for r in runs(tmp_path)] == ["RUNNING"]
    listed = cli("runs", "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert [r["status"] for r in runs(tmp_path)] == ["FAILED"]  # now its process is gone


# --- naming runs, picking stores -------------------------------------------------------


def _trained(folder: Path, *args: str) -> dict[str, Any]:
    proc = cli("train", "--json", *SMALL, *args, cwd=folder)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_run_ids_may_be_any_unique_prefix_and_an_ambiguous_one_lists_the_matches(
    tmp_path: Path, small_mnist: Path
) -> None:
    a = _trained(tmp_path)
    b = _trained(tmp_path, "--set", "seed=7")
    diff = cli("runs", "compare", a["run_id"][:8], b["run_id"][:6], "--json", cwd=tmp_path)
    assert diff.returncode == 0, diff.stderr
    assert json.loads(diff.stdout)["params"]["seed"] == {"a": "42", "b": "7"}
    gate = cli("promote", a["run_id"][:10], "--json", cwd=tmp_path)
    assert gate.returncode == 1 and json.loads(gate.stdout)["candidate_run"] == a["run_id"]  # 4 trees: below the floor
    # Runs with a common first character, made cheaply in the same store, make a prefix ambiguous.
    made = read_store(
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        """
import json
from mlflow.tracking import MlflowClient
c = MlflowClient()
exp = c.get_experiment_by_name("mnistops").experiment_id
ids = [c.create_run(exp, run_name=f"r{i}").info.run_id for i in range(18)]
print(json.dumps(ids))
""",
    )
    assert isinstance(made, list)
    first = next(ch for ch in "0123456789abcdef" if sum(r.startswith(ch) for r in made) >= 2)
    line = one_line_error(cli("runs", "compare", first, a["run_id"], cwd=tmp_path))
    assert line.startswith(f"error: run id '{first}' matches ") and "give more of the id" in line
    matching = [r for r in made if r.startswith(first)]
    assert all(r[:12] in line for r in matching[:5])
    every = [*made, a["run_id"], b["run_id"]]
    absent = next(p for p in ("000000", "ffffff", "abcdef", "123456") if not any(r.startswith(p) for r in every))
    assert f"no run '{absent}'" in one_line_error(cli("runs", "compare", absent, a["run_id"], cwd=tmp_path))


def test_every_store_command_takes_the_configs_store(tmp_path: Path, small_mnist: Path) -> None:
    team = tmp_path / "team"
    team.mkdir()
    run = _trained(team)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = tmp_path / "team.yaml"
    config.write_text(f"tracking:\n  uri: sqlite:///{team / 'mlflow.db'}\n")
    listed = cli("runs", "list", "--config", str(config), "--json", cwd=elsewhere)
    assert [r["run_id"] for r in json.loads(listed.stdout)] == [run["run_id"]]
    again = cli("reproduce", "--config", str(config), run["run_id"][:8], "--json", cwd=elsewhere)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout)["verdict"] == "identical"
    compared = cli("runs", "compare", "--config", str(config), run["run_id"][:8], run["run_id"], cwd=elsewhere)
    assert compared.returncode == 0 and "data    same" in compared.stdout
    assert list(elsewhere.iterdir()) == []  # nothing was made where the commands ran


# --- lifecycle ---------------------------------------------------------------------------


def _champion(folder: Path) -> str | None:
    return read_store(
        f"sqlite:///{folder / 'mlflow.db'}",
        """
import json
from mlflow.tracking import MlflowClient
try:
    print(json.dumps(str(MlflowClient().get_model_version_by_alias("mnist-classifier", "champion").version)))
except Exception:
    print(json.dumps(None))
""",
    )  # type: ignore[return-value]


def test_rollback_walks_back_and_a_rolled_back_version_needs_force(tmp_path: Path, small_mnist: Path) -> None:
    versions = []
    for trees in (30, 31, 32):  # the same data and split, so the gate compares them
        out = _trained(tmp_path, "--set", f"model.params.n_estimators={trees}", "--set", "model.params.max_depth=14")
        promoted = cli("promote", out["run_id"], "--set", "gate.tolerance=1", cwd=tmp_path)
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr
        versions.append(out)
    assert _champion(tmp_path) == "3"
    assert "v3 → v2" in cli("rollback", cwd=tmp_path).stdout
    assert "v2 → v1" in cli("rollback", cwd=tmp_path).stdout
    assert _champion(tmp_path) == "1"
    assert "version 1, the first champion" in one_line_error(cli("rollback", cwd=tmp_path))
    refused = cli("promote", versions[2]["run_id"], "--set", "gate.tolerance=1", "--json", cwd=tmp_path)
    assert refused.returncode == 1
    assert "was rolled back" in json.loads(refused.stdout)["reason"] and _champion(tmp_path) == "1"
    forced = cli("promote", versions[2]["run_id"][:8], "--set", "gate.tolerance=1", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stdout
    assert _champion(tmp_path) == "3"
    dry = cli("promote", versions[1]["run_id"], "--set", "gate.tolerance=1", "--dry-run", cwd=tmp_path)
    assert "WOULD NOT PROMOTE" in dry.stdout and dry.returncode == 1  # v2 was rolled back too


def test_a_dry_run_says_would(tmp_path: Path, small_mnist: Path) -> None:
    out = _trained(tmp_path, "--set", "model.params.n_estimators=30", "--set", "model.params.max_depth=14")
    dry = cli("promote", "--latest", "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0 and "WOULD PROMOTE: passes every check" in dry.stdout
    assert _champion(tmp_path) is None and out["model_version"] == "1"


# --- what a person reads -----------------------------------------------------------------


def test_version_help_and_both_splits(tmp_path: Path) -> None:
    import mnistops

    assert run_cli("--version").stdout.strip() == f"mnistops {mnistops.__version__}"
    for command in (["train"], ["promote"], ["runs", "compare"], ["reproduce"]):
        text = run_cli(*command, "--help").stdout
        assert "list[" not in text and text.count("<bool>") <= 1  # only typer's own --help shows its type
    assert "KEY=VALUE" in run_cli("train", "--help").stdout and "RUN_ID" in run_cli("reproduce", "--help").stdout
    info = json.loads(run_cli("data", "info", "--json").stdout)
    assert (info["split_used_by_training"]["strategy"], info["split_used_by_training"]["train"]) == (
        "stratified",
        56000,
    )
    assert (info["other_split"]["strategy"], info["other_split"]["train"]) == ("official", 60000)
    text = run_cli("data", "info").stdout
    assert "stratified split" in text and "official split" in text and "training uses this one" in text
    official = json.loads(run_cli("data", "info", "--set", "split.strategy=official", "--json").stdout)
    assert official["split_used_by_training"]["train"] == 60000


def test_the_run_log_tells_the_whole_run(tmp_path: Path) -> None:
    out = _trained(tmp_path)
    text = read_store(
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        f"""
import json, mlflow
path = mlflow.artifacts.download_artifacts(run_id={out["run_id"]!r}, artifact_path="run.log",
                                          dst_path={str(tmp_path)!r})
print(json.dumps(open(path).read()))
""",
    )
    assert isinstance(text, str)
    lines = text.splitlines()
    assert "train: random_forest on mnist" in lines[0] and lines[0].endswith("store sqlite:///mlflow.db")
    for expected in (
        "stage load started",
        "data mnist: 70000 images from",
        "stage validate took",
        "split stratified",
        "stage fit took",
        "stage evaluate took",
        "stage log_model took",
        "registered mnist-classifier",
        f"run {out['run_id']} ends FINISHED",
    ):
        assert any(expected in ln for ln in lines), expected


PREDICT = """
import sys, json
sys.modules["mnistops"] = None  # stock MLflow only
import numpy as np, mlflow
model = mlflow.pyfunc.load_model({uri!r})
x = np.load({x!r})
out = {{}}
out["uint8_3d"] = model.predict(x).label.tolist()
out["float64_flat"] = model.predict(x.reshape(len(x), 784).astype(np.float64) / 255).label.tolist()
out["int64_flat"] = model.predict(x.reshape(len(x), 784).astype(np.int64)).label.tolist()
errors = []
for bad in (x.astype(np.float64), x[:, :20, :20], np.full((2, 784), np.nan)):
    try:
        model.predict(bad)
        errors.append("accepted")
    except Exception as exc:
        errors.append(str(exc).splitlines()[-1])
out["errors"] = errors
print(json.dumps(out))
"""


def test_the_model_takes_what_people_pass_through_stock_mlflow(tmp_path: Path, mnist: Dataset) -> None:
    out = _trained(tmp_path)
    np.save(tmp_path / "x.npy", mnist.images[:40])
    got = read_store(
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        PREDICT.format(uri=out["model_uri"], x=str(tmp_path / "x.npy")),
        fresh=True,  # stock MLflow only
    )
    assert isinstance(got, dict)
    assert got["uint8_3d"] == got["float64_flat"] == got["int64_flat"]
    assert np.mean(np.array(got["uint8_3d"]) == mnist.labels[:40]) > 0.5
    float_range, shape, nan = got["errors"]
    assert "float pixels must be in [0, 1], got 0..255" in float_range
    assert "expected images of shape (n, 28, 28) or (n, 784), got (40, 20, 20)" in shape
    assert "NaN" in nan


# --- files that are not what they seem ---------------------------------------------------


def _files(folder: Path, mnist: Dataset) -> dict[str, tuple[Path, str]]:
    """Hostile or broken files, each with what its one-line error must say."""
    import io
    import zipfile

    made: dict[str, tuple[Path, str]] = {}
    bomb = folder / "bomb.npz"  # 1,000,000 blank images, compressed to under 1 MB
    np.savez_compressed(bomb, images=np.zeros((1_000_000, 28, 28), np.uint8))
    assert bomb.stat().st_size < 1_000_000
    made["inflates to a million images"] = (bomb, "array 'images' declares 1,000,000 rows; at most 100,000")
    header = io.BytesIO()  # a .npy header declaring (10**9, 28, 28), and no data
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (10**9, 28, 28)})
    liar = folder / "liar.npz"
    with zipfile.ZipFile(liar, "w") as z:
        z.writestr("images.npy", header.getvalue())
    made["declares a billion images"] = (liar, "array 'images' declares 1,000,000,000 rows; at most 100,000")
    good = folder / "good.npz"
    np.savez(good, images=mnist.images[:500])
    truncated = folder / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:200_000])
    made["truncated"] = (truncated, "is not a readable .npz file (truncated or damaged")
    pickled = folder / "pickled.npz"
    np.savez(pickled, images=np.array([{"a": 1}, None], dtype=object))
    made["needs pickle"] = (pickled, "array 'images' holds Python objects, which need pickle")
    text = folder / "text.npz"
    text.write_text("images,1,2,3\n")
    made["text"] = (text, "is not a readable .npz file (it starts b'images'")
    made["a folder"] = (folder, "is not a file: give the batch file as an .npz file")
    return made


# Runs the command in argv[2:] and writes its peak memory (bytes) to argv[1]. A launcher of its own,
# small, because a child's peak counts what it held before exec: a child of the test's own process
# (which holds MNIST) would start at the test's size.
PEAK = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
open(sys.argv[1], "w").write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024))
sys.exit(code)
"""


def _cli_and_peak(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], int]:
    """The CLI in a fresh process, and that process's own peak memory (bytes)."""
    out = cwd / "peak.txt"
    proc = cli(*args, cwd=cwd, wrap=[sys.executable, "-c", PEAK, str(out)])
    peak = int(out.read_text())
    out.unlink()
    return proc, peak


def test_every_batch_file_is_checked_before_it_is_trusted(tmp_path: Path, mnist: Dataset) -> None:
    """`monitor --batch`: each file refused with one line from its header, before anything is
    inflated or the store is asked (the million-image bomb took 23 GB before the OOM killer)."""
    files = tmp_path / "files"
    files.mkdir()
    for what, (path, message) in _files(files, mnist).items():
        proc, peak = _cli_and_peak("monitor", "--batch", str(path), cwd=tmp_path)
        line = one_line_error(proc)
        assert proc.returncode == 2, what
        assert message in line, (what, line)
        assert peak < 700_000_000, (what, peak)  # the bomb's images alone would be 784 MB
    assert not (tmp_path / "mlflow.db").exists()  # refused before the store was asked
    plain = tmp_path / "plain.npy"  # a plain .npy of images is taken as the batch
    np.save(plain, mnist.images[:7])
    from mnistops.monitor.watch import read_batch

    np.testing.assert_array_equal(read_batch(plain), mnist.images[:7])


def test_every_dataset_file_is_checked_before_it_is_trusted(tmp_path: Path, mnist: Dataset) -> None:
    """`data validate --dataset FILE` and `train --set data.dataset=FILE`: the same files, one
    line each (a plain .npy or a truncated .npz were 44- and 58-line tracebacks)."""
    good = tmp_path / "digits.npz"
    rows = np.arange(0, 70_000, 70)
    np.savez(good, **Dataset("d", mnist.images[rows], mnist.labels[rows], mnist.is_train[rows]).official_arrays())
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    plain = tmp_path / "plain.npy"
    np.save(plain, mnist.images[:10])
    text = tmp_path / "text.npz"
    text.write_text("x_train\n")
    cases = [
        (truncated, "is not a readable .npz file (truncated or damaged"),
        (plain, "is neither a .npz file nor a folder of IDX files"),
        (text, "is not a readable .npz file (it starts b'x_trai'"),
    ]
    for path, message in cases:
        line = one_line_error(cli("data", "validate", "--dataset", str(path), cwd=tmp_path))
        assert message in line, line
    line = one_line_error(cli("train", "--set", f"data.dataset={truncated}", cwd=tmp_path))
    assert "is not a readable .npz file (truncated or damaged" in line
    assert runs(tmp_path) == []  # bad data: no run was started


# --- a full disk -------------------------------------------------------------------------


def _fill_when(proc: subprocess.Popen[str], said: str, disk: Path, deadline_s: float = 240) -> tuple[Path, str]:
    """Fill ``disk`` once ``proc`` writes ``said`` on stderr; the filler, and all it wrote."""
    from support import fill

    assert proc.stderr is not None
    seen, deadline = [], time.monotonic() + deadline_s
    for line in proc.stderr:
        seen.append(line)
        if said in line or time.monotonic() > deadline:
            break
    filler = fill(disk)
    return filler, "".join(seen) + proc.stderr.read()


def _whole_or_absent(folder: Path) -> list[str]:
    """Files under ``folder`` that a reader would find half-written: a logged model without its
    MLmodel, an executed notebook that is not JSON."""
    bad = [str(m) for m in folder.glob("mlruns/**/models/*/artifacts") if not (m / "MLmodel").is_file()]
    for nb in folder.glob("**/*.ipynb"):
        try:
            json.loads(nb.read_text())
        except ValueError:
            bad.append(str(nb))
    return bad


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="needs root to mount a tmpfs")
def test_a_full_disk_during_training_is_one_line_and_leaves_nothing_half_done(
    tmp_path: Path, small_mnist: Path
) -> None:
    """The store on a 64 MB tmpfs that fills as the model is being logged: one line (it was ~1,000
    and 20 tracebacks), exit 2, no half-written model; once the disk is freed the next command ends
    the run FAILED."""
    from support import tiny_disk

    with tiny_disk(tmp_path / "disk", "64m") as disk:
        big = ["--set", "model.params.n_estimators=150", "--set", "model.params.max_depth=30"]
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "mnistops", "-v", "train", *big],
            cwd=disk,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        filler, err = _fill_when(proc, "stage log_model started", disk)
        assert proc.wait(timeout=300) == 2, err[-3000:]
        assert "Traceback" not in err and len(err.splitlines()) < 60, err[-3000:]
        print(err[-2000:])
        assert err.rstrip().splitlines()[-1].startswith(f"error: no space left on device writing {disk}/")
        assert _whole_or_absent(disk) == []
        full = cli("runs", "list", cwd=disk)  # on the full disk: it reads (it was two tracebacks)
        assert "Traceback" not in full.stderr and full.returncode == 0, full.stderr
        filler.unlink()
        listed = cli("runs", "list", "--json", cwd=disk)
        assert listed.returncode == 0, listed.stderr
        assert [r["status"] for r in json.loads(listed.stdout)] == ["FAILED"]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="needs root to mount a tmpfs")
def test_a_full_disk_during_a_batch_is_one_line_and_leaves_nothing_half_done(
    tmp_path: Path, session_cache: Path, digits10k: Path
) -> None:
    """A batch whose store and executed copies are on a tmpfs that fills as 03_train trains: one
    error line, no executed notebook cut short (it was cut at 16,384 bytes, not JSON), and no run
    RUNNING once the next command ran on the freed disk."""
    from support import env_for, tiny_disk

    with tiny_disk(tmp_path / "disk", "64m") as disk:
        cmd = [sys.executable, str(ROOT / "run_notebooks.py"), "-v", "--out", str(disk / "outputs")]
        cmd += ["--only", "02,03", "-p", "dataset", str(digits10k), "-p", "n_estimators", "150"]
        env = env_for(disk, session_cache)
        proc = subprocess.Popen(cmd, cwd=disk, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        filler, err = _fill_when(proc, "03_train: kernel ready", disk)
        code = proc.wait(timeout=300)
        assert code in (1, 2) and "Traceback" not in err, err[-3000:]
        (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
        print(err[-2000:])
        assert "no space left on device writing" in line, err[-3000:]
        assert _whole_or_absent(disk) == []
        filler.unlink()
        listed = cli("runs", "list", "--json", cwd=disk, env={"MLFLOW_TRACKING_URI": f"sqlite:///{disk / 'mlflow.db'}"})
        assert listed.returncode == 0, listed.stderr
        assert "RUNNING" not in {r["status"] for r in json.loads(listed.stdout)}
