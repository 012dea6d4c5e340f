"""Batches that skip what has not changed and resume what failed (mnistops.runner.reuse), on the
real notebooks and a copy of the seed store (its batch ran the seed config once, uncached)."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from support import ROOT, SeedStore, env_for, offline_chromium, one_line_error, run_batch, run_cli, runs_in

SEED = str(ROOT / "configs" / "seed.yaml")


def copy_store(seed: SeedStore, work: Path) -> Path:
    """The seed store's database, copied whole (SQLite's backup), in a folder of its own."""
    work.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(seed.work / "mlflow.db") as source, sqlite3.connect(work / "mlflow.db") as target:
        source.backup(target)
    return work


def batch_json(work: Path, session_cache: Path, *args: str) -> dict[str, Any]:
    """``run_notebooks.py ARGS --json`` on the store in ``work``, which must succeed; what it printed."""
    proc = run_batch(work, session_cache, *args, "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def statuses(result: dict[str, Any]) -> dict[str, str]:
    return {nb["name"]: nb["status"] for nb in result["notebooks"]}


def outputs(ipynb: str, cells: tuple[int, ...]) -> list[Any]:
    nb = json.loads(Path(ipynb).read_text())
    code = [
        c
        for c in nb["cells"]
        if c["cell_type"] == "code" and "injected-parameters" not in c["metadata"].get("tags", [])
    ]
    return [[o.get("text") or o.get("data", {}).get("text/plain") for o in code[i]["outputs"]] for i in cells]


@pytest.mark.xdist_group("seed")
def test_an_unchanged_batch_runs_nothing_and_a_change_reruns_what_it_reaches(
    seed_store: SeedStore, tmp_path: Path, session_cache: Path
) -> None:
    work = copy_store(seed_store, tmp_path / "store")
    seed_batch = seed_store.batch["run_id"]

    t0 = time.perf_counter()
    again = batch_json(work, session_cache, "--config", SEED)
    again_s = time.perf_counter() - t0
    assert set(statuses(again).values()) == {"cached"}
    assert {nb["reused_from"] for nb in again["notebooks"]} == {seed_batch}
    assert again_s <= 0.15 * seed_store.batch_seconds, (again_s, seed_store.batch_seconds)
    assert again["training_run_id"] == seed_store.batch["training_run_id"]
    assert again["training_metrics"] == seed_store.batch["training_metrics"]
    for nb in again["notebooks"]:  # the copies are where the table says, whole
        assert json.loads(Path(nb["ipynb"]).read_text())["cells"]
    run = next(r for r in runs_in(work) if r["id"] == again["run_id"])
    assert run["tags"]["mnistops.notebook.03_train.reused_from"] == seed_batch
    assert {a for a in run["artifacts"] if a.startswith("notebooks/")} >= {
        f"notebooks/{name}.ipynb" for name in statuses(again)
    }

    # One parameter: the notebook that declares it runs, and the one it hands a new run id to.
    deeper = batch_json(work, session_cache, "--config", SEED, "-p", "max_depth", "10")
    assert statuses(deeper) == {
        "01_explore": "cached",
        "02_validate": "cached",
        "03_train": "completed",
        "04_evaluate": "completed",
    }
    assert deeper["training_run_id"] != seed_store.batch["training_run_id"]

    # Two batches that differ in n_estimators, side by side: the parameter, the metrics, the cells.
    fewer = batch_json(work, session_cache, "--config", SEED, "-p", "max_depth", "10", "-p", "n_estimators", "60")
    page = tmp_path / "diff.html"
    proc = run_cli(
        "notebooks",
        "diff",
        deeper["run_id"][:10],
        fewer["run_id"],
        "--out",
        str(page),
        "--json",
        env=env_for(work, session_cache),
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    compared = json.loads(proc.stdout)
    assert compared["parameters"] == {"n_estimators": ["120", "60"]}
    assert compared["metrics"]["accuracy"][0] == deeper["training_metrics"]["accuracy"]
    assert compared["metrics"]["accuracy"][1] == fewer["training_metrics"]["accuracy"]
    changed = {nb["name"]: nb["changed_cells"] for nb in compared["notebooks"]}
    assert changed["01_explore"] == changed["02_validate"] == 0
    assert changed["03_train"] > 0 and changed["04_evaluate"] > 0
    with offline_chromium(page.as_uri()) as (browser_page, requests, _):
        text = browser_page.inner_text("body")
    assert "n_estimators" in text and "120" in text and "60" in text
    assert [u for u in requests if not u.startswith("file://")] == []

    # One character of one notebook: that notebook runs; the others are reused.
    folder = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", folder, ignore=shutil.ignore_patterns("__pycache__", "conftest.py"))
    nb = json.loads((folder / "02_validate.ipynb").read_text())
    markdown = next(c for c in nb["cells"] if c["cell_type"] == "markdown")
    markdown["source"] = ["".join(markdown["source"]) + "!"]
    (folder / "02_validate.ipynb").write_text(json.dumps(nb, indent=1))
    edited = batch_json(work, session_cache, "--config", SEED, "--notebooks", str(folder))
    assert statuses(edited) == {
        "01_explore": "cached",
        "02_validate": "completed",
        "03_train": "cached",
        "04_evaluate": "cached",
    }


@pytest.mark.xdist_group("seed")
def test_a_batch_killed_during_evaluation_resumes_there_and_ends_as_an_uninterrupted_one(
    seed_store: SeedStore, tmp_path: Path, session_cache: Path
) -> None:
    work = copy_store(seed_store, tmp_path / "store")
    cmd = [sys.executable, str(ROOT / "run_notebooks.py"), "--out", str(work / "outputs"), "--config", SEED]
    job = subprocess.Popen(
        [*cmd, "--force", "04_evaluate"],
        cwd=work,
        env=env_for(work, session_cache),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert job.stderr is not None
    seen = []
    for line in job.stderr:  # "▶ 04_evaluate (n cells)" once its first cell is about to run
        seen.append(line)
        if "04_evaluate" in line and "▶" in line:
            time.sleep(1.0)
            job.send_signal(signal.SIGTERM)
            break
    rest = job.communicate(timeout=120)
    assert job.returncode == 143, "".join(seen) + rest[1][-3000:]
    killed = next(
        r for r in runs_in(work) if r["status"] == "KILLED" and r["tags"].get("mnistops.run_type") == "notebook_batch"
    )

    resumed = batch_json(work, session_cache, "--resume")
    assert statuses(resumed) == {
        "01_explore": "cached",
        "02_validate": "cached",
        "03_train": "cached",
        "04_evaluate": "completed",
    }
    run = next(r for r in runs_in(work) if r["id"] == resumed["run_id"])
    assert run["tags"]["mnistops.batch.resumes"] == killed["id"]
    assert resumed["training_run_id"] == seed_store.batch["training_run_id"]
    # The evaluation's tables are those of the uninterrupted seed batch.
    uninterrupted = next(nb["ipynb"] for nb in seed_store.batch["notebooks"] if nb["name"] == "04_evaluate")
    again = next(nb["ipynb"] for nb in resumed["notebooks"] if nb["name"] == "04_evaluate")
    assert outputs(again, (2, 3, 5)) == outputs(uninterrupted, (2, 3, 5))

    # A batch that finished has nothing to resume.
    proc = run_batch(work, session_cache, "--resume", resumed["run_id"][:10])
    assert proc.returncode == 2
    assert one_line_error(proc).startswith(f"error: --resume {resumed['run_id'][:10]}: that batch ended FINISHED")


def test_resume_and_force_refuse_what_they_cannot_do_in_one_line(tmp_path: Path, session_cache: Path) -> None:
    proc = run_batch(tmp_path, session_cache, "--resume")
    assert one_line_error(proc).startswith("error: no tracking store at ")
    create = "import mlflow, sys; mlflow.set_tracking_uri(sys.argv[1]); mlflow.create_experiment('mnistops')"
    subprocess.run([sys.executable, "-c", create, f"sqlite:///{tmp_path / 'mlflow.db'}"], check=True, timeout=120)
    cases = [
        (
            ["--resume"],
            "error: --resume: no failed or killed notebook batch in experiment 'mnistops': nothing to resume",
        ),
        (["--resume", "abc123"], "error: no run 'abc123' in"),
        (["--resume", "-p", "seed", "1"], "error: --resume runs the batch with its own notebooks and parameters"),
        (["--force", "09_nothing"], "error: --force '09_nothing' names no notebook: choose from 01_explore"),
        (
            ["--only", "04_evaluate"],
            "error: notebook 04_evaluate takes run_id from training_run_id, which no notebook before it makes: "
            "run the one that makes it too, or pass -p run_id VALUE",
        ),
    ]
    for args, message in cases:
        proc = run_batch(tmp_path, session_cache, *args)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert one_line_error(proc).startswith(message), (args, proc.stderr[-2000:])
    assert not (tmp_path / "outputs").exists()  # nothing ran, no folder made
