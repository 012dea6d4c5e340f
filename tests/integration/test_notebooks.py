"""The notebook suite end to end: real MNIST, real kernels, a real MLflow store, real papermill,
nbval and Chromium. Every store and output folder is a temp folder of the test."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import nbformat
import psutil
import pytest

from support import SeedStore, env_for, offline_chromium, peek_store, read_store, run_batch, runs_in

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
PYTHON_BIN = Path(sys.executable).parent


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


@pytest.fixture
def seed_batch(seed_store: SeedStore) -> tuple[Path, dict[str, Any]]:
    """The store of ``python run_notebooks.py --config configs/seed.yaml --json`` and its output."""
    return seed_store.work, seed_store.batch


@pytest.mark.slow
@pytest.mark.xdist_group("seed")
def test_the_batch_runs_every_notebook_and_keeps_each_executed_copy(seed_batch: tuple[Path, dict[str, Any]]) -> None:
    work, result = seed_batch
    assert result["status"] == "FINISHED"
    assert [(nb["name"], nb["status"]) for nb in result["notebooks"]] == [
        ("01_explore", "completed"),
        ("02_validate", "completed"),
        ("03_train", "completed"),
        ("04_evaluate", "completed"),
    ]
    out = Path(result["out_dir"])
    assert out.parent == work / "outputs" and re.fullmatch(rf"\d{{8}}T\d{{6}}Z-{result['run_id']}", out.name)
    for nb in result["notebooks"]:
        assert nb["seconds"] > 0 and Path(nb["ipynb"]).parent == out and Path(nb["html"]).parent == out
        executed = nbformat.read(nb["ipynb"], as_version=4)
        assert executed.metadata.papermill["exception"] is None
        assert all(c.execution_count for c in executed.cells if c.cell_type == "code")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{n}.{ext}" for n in ("01_explore", "02_validate", "03_train", "04_evaluate") for ext in ("ipynb", "html")
    )


@pytest.mark.slow
@pytest.mark.xdist_group("seed")
def test_the_batch_run_holds_the_record_and_the_training_run_is_its_child(
    seed_batch: tuple[Path, dict[str, Any]], seed_store: SeedStore
) -> None:
    from mnistops.runner.notebooks import discover

    _, result = seed_batch
    runs = {r["id"]: r for r in seed_store.batch_runs}  # read back as the batch left the store
    batch, train = runs[result["run_id"]], runs[result["training_run_id"]]
    assert batch["status"] == "FINISHED" and train["status"] == "FINISHED"
    assert train["tags"]["mlflow.parentRunId"] == result["run_id"]
    assert batch["tags"]["mnistops.run_type"] == "notebook_batch" and train["tags"]["mnistops.run_type"] == "train"
    assert batch["tags"]["mnistops.training_run_id"] == result["training_run_id"]
    for nb in discover(NOTEBOOKS):
        assert batch["tags"][f"mnistops.notebook.{nb.name}.sha256"] == nb.sha256
    assert batch["tags"]["env.python"] and batch["tags"]["env.pkg.mlflow"] and batch["tags"]["mnistops.version"]
    if (ROOT / ".git").exists():
        assert batch["tags"]["git.code.commit"] == train["tags"]["git.code.commit"]
    assert batch["params"]["n_estimators"] == "120" and batch["params"]["max_depth"] == "20"
    assert batch["params"]["dataset"] == "mnist"
    for name in ("01_explore", "02_validate", "03_train", "04_evaluate"):
        assert f"notebooks/{name}.ipynb" in batch["artifacts"] and f"notebooks/{name}.html" in batch["artifacts"]
        assert batch["metrics"][f"time_{name}_s"] > 0
    assert {"config.yaml", "parameters.json", "environment/requirements.lock.txt", "run.log"} <= set(batch["artifacts"])
    assert len(runs) == 2  # the batch and its training run: nothing else was opened


def _interval(ipynb: str) -> tuple[datetime, datetime]:
    """When papermill started and ended a notebook (its executed copy's metadata)."""
    meta = nbformat.read(ipynb, as_version=4).metadata.papermill
    return datetime.fromisoformat(meta["start_time"]), datetime.fromisoformat(meta["end_time"])


@pytest.mark.slow
@pytest.mark.xdist_group("seed")
def test_independent_notebooks_ran_side_by_side_and_evaluation_after_training(
    seed_batch: tuple[Path, dict[str, Any]], seed_store: SeedStore
) -> None:
    _, result = seed_batch  # run with --jobs 2
    (batch,) = [r for r in seed_store.batch_runs if r["id"] == result["run_id"]]
    assert batch["tags"]["mnistops.batch.jobs"] == "2"
    span = {nb["name"]: _interval(nb["ipynb"]) for nb in result["notebooks"]}
    first_end = min(end for _, end in span.values())
    # 01_explore waited for nothing: it started before any notebook ended, and so did 03_train.
    assert span["01_explore"][0] < first_end and span["03_train"][0] < first_end
    # ... so the exploration and the training ran at the same time, in two kernels.
    assert span["01_explore"][0] < span["03_train"][1] and span["03_train"][0] < span["01_explore"][1]
    # The evaluation takes the training run: it started only once the training had ended.
    assert span["04_evaluate"][0] >= span["03_train"][1]


@pytest.mark.slow
@pytest.mark.xdist_group("seed")
def test_the_training_notebook_shows_the_seed_result(seed_batch: tuple[Path, dict[str, Any]]) -> None:
    _, result = seed_batch
    assert round(result["training_metrics"]["accuracy"], 4) == 0.9669
    assert round(result["training_metrics"]["f1_macro"], 4) == 0.9666
    executed = nbformat.read(Path(result["out_dir"]) / "03_train.ipynb", as_version=4)
    checked = [c for c in executed.cells if c.cell_type == "code" and c.source.startswith("# NBVAL_CHECK_OUTPUT")]
    assert "".join(o["text"] for o in checked[0].outputs) == "accuracy 0.9669\nmacro F1 0.9666\n"
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert f'batch_run_id = "{result["run_id"]}"' in injected[0].source
    evaluate = nbformat.read(Path(result["out_dir"]) / "04_evaluate.ipynb", as_version=4)
    injected = [c for c in evaluate.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert f'run_id = "{result["training_run_id"]}"' in injected[0].source  # it evaluated that very run
    text = "".join(o.get("text", "") for c in evaluate.cells if c.cell_type == "code" for o in c.outputs)
    assert f"run {result['training_run_id']}: random_forest on mnist, 14,000 held-out images" in text
    assert "WOULD PROMOTE: passes every check (dry run: nothing moved)" in text


@pytest.mark.slow
@pytest.mark.xdist_group("seed")
def test_the_notebook_trains_exactly_what_mnistops_train_trains(
    seed_batch: tuple[Path, dict[str, Any]], seed_store: SeedStore
) -> None:
    """``mnistops train --config configs/seed.yaml --force`` in the batch's store (``seed_store``,
    whose CLI run the seed tests of test_train.py read too) trains bit for bit what 03_train did."""
    work, result = seed_batch
    cli = seed_store.train
    runs = {r["id"]: r for r in runs_in(work)}
    notebook_run = runs[result["training_run_id"]]
    for tag in ("mnistops.config_hash", "mnistops.data_fingerprint", "mnistops.split_fingerprint"):
        assert notebook_run["tags"][tag] == runs[cli["run_id"]]["tags"][tag]
    quality = {k: v for k, v in cli["metrics"].items() if not k.startswith("time_") and k != "peak_rss_mb"}
    assert len(quality) > 30
    assert {k: notebook_run["metrics"][k] for k in quality} == quality  # bit for bit


@pytest.mark.slow
@pytest.mark.xdist_group("seed")
def test_the_html_copy_renders_offline_in_chromium(seed_batch: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    _, result = seed_batch
    page_path = Path(result["out_dir"]) / "03_train.html"
    with offline_chromium(page_path.as_uri()) as (page, requests, errors):
        images = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.complete, i.naturalWidth])")
        heading = page.inner_text("h1")
        page.screenshot(path=str(tmp_path / "03_train.png"), full_page=True)
    assert [u for u in requests if not u.startswith(("file://", "data:"))] == []
    assert errors == []
    assert len(images) >= 3 and all(done and width > 100 for done, width in images)
    assert heading.startswith("03 · Train")
    assert (tmp_path / "03_train.png").stat().st_size > 50_000


def test_p_injects_a_value_that_the_run_and_the_fitted_forest_carry(tmp_path: Path, session_cache: Path) -> None:
    proc = run_batch(
        tmp_path, session_cache, "--only", "03_train", "-p", "n_estimators", "7", "-p", "max_depth", "6", "--json"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    (train,) = [r for r in runs_in(tmp_path) if r["id"] == result["training_run_id"]]
    assert train["params"]["model.params.n_estimators"] == "7" and train["params"]["model.params.max_depth"] == "6"
    trees = read_store(
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        f"""
import json, mlflow
from mlflow.tracking import MlflowClient
run = MlflowClient().get_run({result["training_run_id"]!r})
model = mlflow.pyfunc.load_model(f"models:/{{run.outputs.model_outputs[-1].model_id}}").unwrap_python_model().model
forest = model.steps[-1][1] if hasattr(model, "steps") else model
print(json.dumps([len(forest.estimators_), forest.n_estimators, max(t.get_depth() for t in forest.estimators_)]))
""",
    )
    assert trees == [7, 7, 6]


def test_a_bad_dataset_stops_the_batch_before_training(tmp_path: Path, session_cache: Path) -> None:
    missing = tmp_path / "nowhere" / "digits.npz"
    # One notebook at a time: the first failure is 01_explore's (side by side: see the next test).
    proc = run_batch(tmp_path, session_cache, "-p", "dataset", str(missing), "--jobs", "1")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    (line,) = error_lines(proc.stderr)
    assert line.startswith("error: notebook 01_explore failed at cell In [4]: DataError: no dataset named")
    assert str(missing) in line and "use one of mnist, fashion-mnist or a path" in line
    (out,) = (tmp_path / "outputs").iterdir()
    assert sorted(p.name for p in out.iterdir()) == ["01_explore.html", "01_explore.ipynb"]
    partial = nbformat.read(out / "01_explore.ipynb", as_version=4)
    assert "papermill-error-cell-tag" in partial.cells[0].metadata.get("tags", [])  # papermill's banner
    failed = [c for c in partial.cells if c.cell_type == "code" and c.metadata.papermill.get("exception")]
    assert failed[0].outputs[0]["ename"] == "DataError"
    assert failed[0].outputs[0]["traceback"][0].endswith(str(failed[0].outputs[0]["evalue"]))  # one line, no stack
    (batch,) = runs_in(tmp_path)  # no training run was ever started
    assert batch["status"] == "FAILED" and batch["tags"]["mnistops.batch.failed_notebook"] == "01_explore"
    assert {"notebooks/01_explore.ipynb", "notebooks/01_explore.html"} <= set(batch["artifacts"])

    # Without the exploration notebook, the validation notebook is the one that stops it.
    again = tmp_path / "again"
    again.mkdir()
    proc = run_batch(again, session_cache, "--only", "02,03,04", "-p", "dataset", str(missing), "--jobs", "1", "--json")
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert [(n["name"], n["status"]) for n in result["notebooks"]] == [
        ("02_validate", "failed"),
        ("03_train", "not run"),
        ("04_evaluate", "not run"),
    ]
    assert result["notebooks"][0]["cell"] == 4 and result["training_run_id"] is None
    assert error_lines(proc.stderr)[0].startswith("error: notebook 02_validate failed at cell In [4]: DataError")
    assert [r["status"] for r in runs_in(again)] == ["FAILED"]


def _interrupted_copy(path: Path) -> bool:
    """Whether the executed copy at ``path`` shows a cell stopped by KeyboardInterrupt."""
    cells = nbformat.read(path, as_version=4).cells
    return any(o.get("ename") == "KeyboardInterrupt" for c in cells if c.cell_type == "code" for o in c.outputs)


def _processes_under(folder: Path) -> list[psutil.Process]:
    """The processes whose command line names ``folder`` (a batch's kernels and runner)."""
    return [p for p in psutil.process_iter(["cmdline"]) if str(folder) in " ".join(p.info["cmdline"] or [])]


def _kernels_of(pid: int) -> list[psutil.Process]:
    kernels = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if "ipykernel" in " ".join(child.cmdline()):
                kernels.append(child)
        except psutil.Error:  # it ended between the listing and the look
            pass
    return kernels


RUNNING_CHILD = (
    "SELECT 1 FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid"
    " WHERE runs.status = 'RUNNING' AND tags.key = 'mlflow.parentRunId' LIMIT 1"
)


def test_sigterm_during_training_ends_every_run_killed_and_leaves_no_kernel(
    tmp_path: Path, session_cache: Path
) -> None:
    cmd = [
        sys.executable,
        str(ROOT / "run_notebooks.py"),
        "--out",
        str(tmp_path / "outputs"),
        "--only",
        "03_train",
        "-p",
        "n_estimators",
        "3000",
        "-p",
        "max_depth",
        "0",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=env_for(tmp_path, session_cache),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while (
            time.monotonic() < deadline
            and proc.poll() is None
            and peek_store(tmp_path / "mlflow.db", RUNNING_CHILD) is None
        ):
            time.sleep(1.0)
        time.sleep(2.0)  # well inside the fit: 3,000 full-depth trees take many minutes
        kernels = _kernels_of(proc.pid)
        assert kernels, "the batch should have a kernel running the training notebook"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "terminated" in err
    for kernel in kernels:
        assert not kernel.is_running() or kernel.status() == psutil.STATUS_ZOMBIE, f"kernel {kernel.pid} is left"
    statuses = {
        ("batch" if r["tags"]["mnistops.run_type"] == "notebook_batch" else "train"): r["status"]
        for r in runs_in(tmp_path)
    }
    assert statuses == {"batch": "KILLED", "train": "KILLED"}
    (out,) = (tmp_path / "outputs").iterdir()
    assert _interrupted_copy(out / "03_train.ipynb")


def _tiny_suite(folder: Path, code: str) -> Path:
    folder.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell("n: int = 1", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(code),
        nbformat.v4.new_code_cell("print('after')"),
    ]
    nbformat.write(nb, folder / "01_tiny.ipynb")
    return folder


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("import time\ntime.sleep(120)", "error: notebook 01_tiny: a cell ran past the time limit"),
        ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", "error: notebook 01_tiny: the kernel died"),
    ],
    ids=["timeout", "dead-kernel"],
)
def test_a_timeout_or_a_dead_kernel_is_one_line_a_failed_run_and_no_kernel(
    tmp_path: Path, session_cache: Path, code: str, expected: str
) -> None:
    suite = _tiny_suite(tmp_path / "suite", code)
    proc = run_batch(tmp_path, session_cache, "--notebooks", str(suite), "--cell-timeout", "5", timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = error_lines(proc.stderr)
    assert line.startswith(expected)
    (batch,) = runs_in(tmp_path)
    assert batch["status"] == "FAILED"
    (out,) = (tmp_path / "outputs").iterdir()
    assert (out / "01_tiny.ipynb").exists()
    assert _processes_under(tmp_path) == []


def _side_by_side_suite(folder: Path, cells: dict[str, str]) -> Path:
    """Notebooks that declare ``"after": []`` (each runs its one cell), then ``09_last``, which
    declares nothing and so waits for all of them."""
    folder.mkdir()
    for name, code in {**cells, "09_last": "print('last')"}.items():
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        if name != "09_last":
            nb.metadata["mnistops"] = {"after": []}
        nb.cells = [
            nbformat.v4.new_code_cell("n: int = 1", metadata={"tags": ["parameters"]}),
            nbformat.v4.new_code_cell(code),
            nbformat.v4.new_code_cell("print('after')"),
        ]
        nbformat.write(nb, folder / f"{name}.ipynb")
    return folder


def test_a_failure_stops_the_notebook_running_beside_it_and_the_batch(tmp_path: Path, session_cache: Path) -> None:
    suite = _side_by_side_suite(
        tmp_path / "suite",
        {"01_slow": "import time\ntime.sleep(300)", "02_fail": "import time\ntime.sleep(2)\nraise ValueError('boom')"},
    )
    proc = run_batch(tmp_path, session_cache, "--notebooks", str(suite), "--jobs", "2", "--json", timeout=240)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert error_lines(proc.stderr) == ["error: notebook 02_fail failed at cell In [2]: ValueError: boom"]
    result = json.loads(proc.stdout)
    assert [(n["name"], n["status"], n["error"]) for n in result["notebooks"]] == [
        ("01_slow", "stopped", "stopped: 02_fail failed"),
        ("02_fail", "failed", "notebook 02_fail failed at cell In [2]: ValueError: boom"),
        ("09_last", "not run", None),
    ]
    (batch,) = runs_in(tmp_path)
    assert batch["status"] == "FAILED" and batch["tags"]["mnistops.batch.failed_notebook"] == "02_fail"
    out = Path(result["out_dir"])
    assert sorted(p.name for p in out.iterdir()) == ["01_slow.html", "01_slow.ipynb", "02_fail.html", "02_fail.ipynb"]
    assert _interrupted_copy(out / "01_slow.ipynb")  # interrupted in its sleep, saved as far as it ran
    assert {"notebooks/01_slow.ipynb", "notebooks/02_fail.ipynb"} <= set(batch["artifacts"])
    assert _processes_under(tmp_path) == []


def test_sigterm_interrupts_every_running_notebook_and_leaves_no_kernel(tmp_path: Path, session_cache: Path) -> None:
    suite = _side_by_side_suite(
        tmp_path / "suite", {"01_a": "import time\ntime.sleep(300)", "02_b": "import time\ntime.sleep(300)"}
    )
    log = tmp_path / "stderr.txt"
    cmd = [sys.executable, str(ROOT / "run_notebooks.py"), "--out", str(tmp_path / "outputs")]
    with log.open("w") as err:
        proc = subprocess.Popen(
            [*cmd, "--notebooks", str(suite), "--jobs", "2"],
            cwd=tmp_path,
            env=env_for(tmp_path, session_cache),
            stdout=subprocess.DEVNULL,
            stderr=err,
            text=True,
        )
        try:
            deadline = time.monotonic() + 180
            # The plain progress lines (stderr is no terminal): one per notebook as it starts.
            while time.monotonic() < deadline and proc.poll() is None and log.read_text().count("▶") < 2:
                time.sleep(0.5)
            assert "▶ 01_a (3 cells)" in log.read_text() and "▶ 02_b (3 cells)" in log.read_text()
            time.sleep(2.0)  # both inside their sleep
            kernels = _kernels_of(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
    text = log.read_text()
    assert proc.returncode == 143 and "Traceback" not in text and "terminated" in text
    assert "■ 01_a killed" in text and "■ 02_b killed" in text
    for kernel in kernels:
        assert not kernel.is_running() or kernel.status() == psutil.STATUS_ZOMBIE, f"kernel {kernel.pid} is left"
    (batch,) = runs_in(tmp_path)
    assert batch["status"] == "KILLED" and batch["tags"]["mnistops.batch.stopped_at"] == "01_a,02_b"
    (out,) = (tmp_path / "outputs").iterdir()
    assert _interrupted_copy(out / "01_a.ipynb") and _interrupted_copy(out / "02_b.ipynb")
    assert not (out / "09_last.ipynb").exists()


@pytest.mark.slow
def test_stock_papermill_runs_each_notebook_with_one_injected_parameter(tmp_path: Path, session_cache: Path) -> None:
    env = env_for(tmp_path, session_cache)
    papermill = [str(PYTHON_BIN / "papermill"), "--no-progress-bar", "-k", "python3"]
    for name, param, value in (
        ("01_explore", "samples_per_class", "3"),
        ("02_validate", "test_size", "0.25"),
        ("03_train", "n_estimators", "30"),
        ("04_evaluate", "promote", "True"),
    ):
        out = tmp_path / f"{name}.out.ipynb"
        cmd = [*papermill, str(NOTEBOOKS / f"{name}.ipynb"), str(out), "-p", param, value]
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        executed = nbformat.read(out, as_version=4)
        (injected,) = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert f"{param} = {value}" in injected.source
    text = {
        p.stem: "".join(
            o.get("text", "") for c in nbformat.read(p, as_version=4).cells if c.cell_type == "code" for o in c.outputs
        )
        for p in tmp_path.glob("*.out.ipynb")
    }
    assert "stratified split: train 52,500 images, test 17,500 images" in text["02_validate.out"]
    (train,) = [r for r in runs_in(tmp_path)]
    assert train["params"]["model.params.n_estimators"] == "30" and train["status"] == "FINISHED"
    assert "PROMOTED: passes every check" in text["04_evaluate.out"]
    champion = read_store(
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        """
import json
from mlflow.tracking import MlflowClient
print(json.dumps(MlflowClient().get_model_version_by_alias("mnist-classifier", "champion").run_id))
""",
    )
    assert champion == train["id"]
    assert not (NOTEBOOKS / "mlruns").exists() and not (tmp_path / "notebooks").exists()


@pytest.mark.slow
def test_nbval_fails_when_a_checked_output_is_altered(tmp_path: Path, session_cache: Path) -> None:
    suite = tmp_path / "nb"
    suite.mkdir()
    shutil.copy(NOTEBOOKS / "conftest.py", suite / "conftest.py")
    nb = nbformat.read(NOTEBOOKS / "03_train.ipynb", as_version=4)
    (checked,) = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith("# NBVAL_CHECK_OUTPUT")]
    assert checked.outputs[0]["text"] == "accuracy 0.9669\nmacro F1 0.9666\n"
    checked.outputs[0]["text"] = "accuracy 0.9670\nmacro F1 0.9666\n"
    nbformat.write(nb, suite / "03_train.ipynb")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q", str(suite / "03_train.ipynb")],
        cwd=tmp_path,
        env=env_for(tmp_path, session_cache),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "1 failed" in proc.stdout and "accuracy 0.9670" in proc.stdout and "accuracy 0.9669" in proc.stdout
    assert not (tmp_path / "mlflow.db").exists() and not (suite / "mlruns").exists()  # nbval used its own store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_make_lab_serves_the_notebooks_and_the_project_kernel_on_loopback(tmp_path: Path) -> None:
    if not (PYTHON_BIN / "jupyter-lab").exists() or shutil.which("make") is None:
        pytest.skip("needs make and JupyterLab (the lab extra)")
    port, token = _free_port(), "t0ken"
    env = {
        **os.environ,
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    lab_args = f"--IdentityProvider.token={token}" + (" --allow-root" if os.geteuid() == 0 else "")
    server = subprocess.Popen(
        ["make", "-s", "lab", f"LAB_PORT={port}", f"LAB_ARGS={lab_args}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        specs: dict[str, Any] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not specs and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/kernelspecs?token={token}", timeout=5) as r:
                    specs = json.load(r)
            except OSError:
                time.sleep(0.5)
        assert specs.get("default") == "python3", "JupyterLab did not come up"
        lab = [p for p in psutil.Process(server.pid).children(recursive=True) if "jupyter" in " ".join(p.cmdline())]
        listening = {c.laddr.ip for p in lab for c in p.net_connections() if c.status == "LISTEN"}
        assert listening == {"127.0.0.1"}
        start = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/kernels",
            data=b'{"name": "python3"}',
            headers={"Authorization": f"token {token}"},
            method="POST",
        )
        with urllib.request.urlopen(start, timeout=60) as r:
            assert json.load(r)["name"] == "python3"
        kernels = [
            p
            for p in psutil.Process(server.pid).children(recursive=True)
            if "ipykernel_launcher" in " ".join(p.cmdline())
        ]
        assert [Path(k.cmdline()[0]).parent for k in kernels] == [PYTHON_BIN]  # the project's venv
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents?token={token}", timeout=5) as r:
            names = sorted(item["name"] for item in json.load(r)["content"])
        assert {"01_explore.ipynb", "02_validate.ipynb", "03_train.ipynb", "04_evaluate.ipynb"} <= set(names)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.xdist_group("seed")
def test_the_serving_notebook_runs_only_when_asked_and_stops_its_server(
    seed_batch: tuple[Path, dict[str, Any]], session_cache: Path
) -> None:
    """``--only 05`` after the batch: the model the batch trained, served on loopback, answers as it
    does offline; the server is gone when the notebook ends. Last in this file: it adds a batch
    run to the store the other tests read."""
    import psutil

    work, _ = seed_batch
    proc = run_batch(work, session_cache, "--only", "05", "--json")
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout)
    assert [(nb["name"], nb["status"]) for nb in result["notebooks"]] == [("05_serve", "completed")]
    executed = nbformat.read(result["notebooks"][0]["ipynb"], as_version=4)
    text = "".join("".join(o.get("text", "")) for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert "same classes as offline: True" in text
    assert "largest probability difference below 1e-6: True" in text
    assert "exit code 0" in text
    images = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the held-out answers, the picture
    store = str(work / "mlflow.db")
    servers = [p for p in psutil.process_iter(["cmdline", "environ"]) if "serve" in (p.info["cmdline"] or [])]
    assert [p for p in servers if store in str((p.info["environ"] or {}).get("MLFLOW_TRACKING_URI"))] == []
