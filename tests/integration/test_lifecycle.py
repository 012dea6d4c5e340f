"""Registry, promotion gate, rollback, reproduction, run cache and runs list/compare.

Everything runs against a fresh SQLite store in a temp folder, through the real CLI, on the
10,000-image subset of MNIST (``small_mnist``): what is tested here does not depend on the data's size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from mnistops.data import cache, sources
from mnistops.data.dataset import Dataset
from support import one_line_error, run_cli

GOOD = ["--set", "model.params.n_estimators=25", "--set", "model.params.max_depth=14"]
BETTER = ["--set", "model.params.n_estimators=40", "--set", "model.params.max_depth=18"]
WORSE = ["--set", "model.params.n_estimators=5", "--set", "model.params.max_depth=5"]
TINY = ["--set", "model.params.n_estimators=6", "--set", "model.params.max_depth=6"]
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("small_mnist")


def train(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = run_cli("train", "--json", *args, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def aliases() -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    model = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_registered_model("mnist-classifier")
    return {alias: str(version) for alias, version in model.aliases.items()}


def version_tags(version: str) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    return dict(MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_model_version("mnist-classifier", version).tags)


def test_gate_promotes_refuses_and_rolls_back(store: Path) -> None:
    good = train(*GOOD)
    assert good["model_version"] == "1"
    first = run_cli("promote", good["run_id"], "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["promoted"] and aliases() == {"champion": "1"}

    worse = train(*WORSE)
    refused = run_cli("promote", worse["run_id"], "--json")
    assert refused.returncode == 1, refused.stderr
    decision = json.loads(refused.stdout)
    assert not decision["promoted"] and decision["champion_version"] == "1"
    rows = {c["rule"]: c for c in decision["checks"]}
    assert not rows["floor"]["passed"] and not rows["not worse than champion"]["passed"]
    assert rows["not worse than champion"]["delta"] < -0.002
    assert aliases() == {"champion": "1"}  # unchanged
    tags = version_tags(worse["model_version"])
    assert tags["mnistops.gate.decision"] == "refused" and "f1_macro" in tags["mnistops.gate.reason"]

    better = train(*BETTER, "--promote")  # train --promote gates right after training
    assert better["promotion"]["promoted"], better["promotion"]
    assert aliases() == {"champion": better["model_version"], "previous": "1"}
    assert version_tags(better["model_version"])["mnistops.gate.decision"] == "promoted"

    rolled = run_cli("rollback")
    assert rolled.returncode == 0, rolled.stderr
    assert aliases() == {"champion": "1"}
    assert "version 1, the first champion: there is no earlier one" in one_line_error(run_cli("rollback"))
    assert version_tags(better["model_version"])["mnistops.gate.rolled_back"]


def test_dry_run_moves_and_records_nothing(store: Path) -> None:
    run = train(*GOOD)
    proc = run_cli("promote", "--latest", "--dry-run", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["dry_run"]
    from mlflow.tracking import MlflowClient

    assert MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_registered_model("mnist-classifier").aliases == {}
    assert "mnistops.gate.decision" not in version_tags(run["model_version"])


def test_gate_refuses_a_candidate_on_another_split(store: Path) -> None:
    champion = train(*GOOD, "--promote")
    assert champion["promotion"]["promoted"]
    other = train(*GOOD, "--set", "split.strategy=official")
    proc = run_cli("promote", other["run_id"])
    assert proc.returncode == 1
    assert "different split" in proc.stdout and other["split_fingerprint"] in proc.stdout.replace("\n", "")
    assert champion["split_fingerprint"] in proc.stdout.replace("\n", "")
    assert aliases() == {"champion": champion["model_version"]}


@pytest.mark.skipif(not sources.FASHION_DEBIAN_DIR.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_gate_refuses_a_candidate_on_other_data(store: Path) -> None:
    champion = train(*GOOD, "--promote")
    fashion = train(*TINY, "--set", "data.dataset=fashion-mnist")
    proc = run_cli("promote", fashion["run_id"], "--json")
    assert proc.returncode == 1
    reason = json.loads(proc.stdout)["reason"]
    assert f"data fingerprint {fashion['data_fingerprint']} (candidate) vs {champion['data_fingerprint']}" in reason


def test_failure_between_alias_moves_leaves_a_valid_champion(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from mnistops.config import load_config
    from mnistops.lifecycle import registry

    first = train(*GOOD, "--promote")
    second = train(*BETTER)
    real = MlflowClient.set_registered_model_alias

    def store_goes_away(self: MlflowClient, name: str, alias: str, version: str) -> None:
        if alias == "champion":
            raise MlflowException("(sqlite3.OperationalError) unable to open database file")
        real(self, name, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", store_goes_away)
    cfg = load_config()
    with pytest.raises(MlflowException, match="unable to open database"):
        registry.promote(os.environ["MLFLOW_TRACKING_URI"], second["run_id"], cfg.gate, "mnist-classifier")
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", real)  # the store is back
    now = aliases()
    assert now["champion"] == first["model_version"]  # never at nothing, never half-moved
    assert MlflowClient().get_model_version("mnist-classifier", now["champion"]).status == "READY"


def test_reproduce_says_identical(store: Path) -> None:
    original = train(*TINY)
    proc = run_cli("reproduce", original["run_id"], "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["verdict"] == "identical" and result["prediction_mismatches"] == 0
    assert result["max_proba_diff"] == 0.0 and result["metric_diffs"] == {}
    from mlflow.tracking import MlflowClient

    tags = MlflowClient().get_run(result["new_run"]).data.tags
    assert tags["mnistops.reproduction_of"] == original["run_id"]
    assert tags["mnistops.reproduction.verdict"] == "identical"
    assert "mnistops.model_version" not in tags  # a reproduction registers nothing


def test_reproduce_reports_changed_package_versions(store: Path) -> None:
    from mlflow.tracking import MlflowClient

    original = train(*TINY)
    MlflowClient().set_tag(original["run_id"], "env.pkg.numpy", "1.26.4")  # as if trained on an older numpy
    proc = run_cli("reproduce", original["run_id"], "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["package_diffs"]["numpy"] == {"run": "1.26.4", "now": np.__version__}
    assert any(w.startswith("package numpy: 1.26.4 in the run") for w in result["warnings"])
    text = run_cli("reproduce", original["run_id"])
    assert "warning: package numpy: 1.26.4 in the run, " + np.__version__ + " now" in text.stdout


def test_reproduce_refuses_when_the_users_data_file_changed(store: Path, mnist: Dataset) -> None:
    rows = np.arange(0, 70_000, 14)  # 5,000 images, both splits
    path = store / "digits.npz"
    sub = Dataset("digits", mnist.images[rows], mnist.labels[rows], mnist.is_train[rows])
    np.savez(path, **sub.official_arrays())
    original = train(*TINY, "--set", f"data.dataset={path}")
    with np.load(path) as z:
        arrays = {k: z[k].copy() for k in z.files}
    arrays["x_test"][0, 10, 10] ^= 0xFF
    np.savez(path, **arrays)
    line = one_line_error(run_cli("reproduce", original["run_id"]))
    assert f"with fingerprint {original['data_fingerprint']}" in line
    assert "it now has fingerprint" in line and "restore the original data" in line


@pytest.mark.skipif(not sources.FASHION_DEBIAN_DIR.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_reproduce_refuses_when_the_cached_file_changed(store: Path, private_cache: Path) -> None:
    original = train(*TINY, "--set", "data.dataset=fashion-mnist")
    ds = sources.load("fashion-mnist", source="cache")
    images = ds.images.copy()
    images[5, 3, 3] ^= 0x0F  # a consistent but different cache file: fingerprint recorded anew
    changed = Dataset(**{**ds.__dict__, "images": images, "fingerprint": ""})
    cache.write_dataset(changed)
    line = one_line_error(run_cli("reproduce", original["run_id"]))
    assert f"fingerprint {original['data_fingerprint']}" in line and "it now has fingerprint" in line


def test_run_cache_skips_work_already_done(store: Path, clean_source: Path) -> None:
    env = {"PYTHONPATH": str(clean_source / "lib")}
    first = train(*TINY, env=env)
    proc = run_cli("-v", "train", "--json", *TINY, env=env)
    assert proc.returncode == 0, proc.stderr
    second = json.loads(proc.stdout)
    assert second["cached"] is True and second["run_id"] == first["run_id"]
    assert second["metrics"]["accuracy"] == first["metrics"]["accuracy"]
    assert second["model_uri"] == first["model_uri"]
    assert "run cache hit" in proc.stderr and "stage fit" not in proc.stderr
    from mlflow.tracking import MlflowClient

    def n_runs() -> int:
        exp = MlflowClient().get_experiment_by_name("mnistops")
        return len(MlflowClient().search_runs([exp.experiment_id]))

    assert n_runs() == 1  # the cache hit logged nothing
    forced = train(*TINY, "--force", env=env)
    assert forced["cached"] is False and forced["run_id"] != first["run_id"] and n_runs() == 2
    (clean_source / "lib" / "mnistops" / "NOTE.txt").write_text("local change")  # now the tree is dirty
    try:
        dirty = train(*TINY, env=env)
    finally:
        (clean_source / "lib" / "mnistops" / "NOTE.txt").unlink()
    assert dirty["cached"] is False and n_runs() == 3


def test_runs_list_and_compare(store: Path) -> None:
    a = train(*GOOD, "--promote")
    b = train(*TINY)
    rows = json.loads(run_cli("runs", "list", "--json").stdout)
    assert [r["run_id"] for r in rows] == [b["run_id"], a["run_id"]]
    assert [r["champion"] for r in rows] == [False, True]
    assert (
        rows[1]["params"] == {"n_estimators": "25", "max_depth": "14"} and rows[1]["data"] == a["data_fingerprint"][:12]
    )
    assert json.loads(run_cli("runs", "list", "--limit", "1", "--json").stdout)[0]["run_id"] == b["run_id"]
    diff = json.loads(run_cli("runs", "compare", a["run_id"], b["run_id"], "--json").stdout)
    assert diff["params"]["model.params.n_estimators"] == {"a": "25", "b": "6"}
    assert diff["metrics"]["accuracy"]["delta"] == pytest.approx(b["metrics"]["accuracy"] - a["metrics"]["accuracy"])
    assert diff["data"]["same"] and diff["split"]["same"] and not diff["config"]["same"]
    assert diff["environment"] == {}
    text = run_cli("runs", "compare", a["run_id"], b["run_id"]).stdout
    assert "param   model.params.n_estimators: 25 → 6" in text
    assert "'nope' is not a run id" in one_line_error(run_cli("runs", "compare", a["run_id"], "nope"))
    absent = "abcdef0" if not b["run_id"].startswith("abcdef0") else "0fedcba"
    assert f"no run '{absent}'" in one_line_error(run_cli("runs", "compare", a["run_id"], absent))


def _commands(workflow: dict[str, Any], program: str) -> list[list[str]]:
    out = []
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            for line in str(step.get("run", "")).replace("\\\n", " ").splitlines():  # continued lines joined
                words = line.split("|")[0].split(">>")[0].split()
                if words[:1] == [program]:
                    out.append(words[1:])
                elif words[:2] == ["python", program]:
                    out.append(words[2:])
    return out


def test_workflow_runs_only_commands_that_exist() -> None:
    from mnistops.cli.notebooks import parse_options

    path = ROOT / ".github" / "workflows" / "ci.yml"
    workflow = yaml.safe_load(path.read_text())
    triggers = workflow[True] if True in workflow else workflow["on"]  # YAML reads `on:` as True
    assert {"push", "pull_request"} <= set(triggers)
    assert workflow["jobs"]["notebooks"]["if"].startswith("github.ref == 'refs/heads/main'")
    steps = [str(s.get("run", "")) for j in workflow["jobs"].values() for s in j["steps"]]
    assert any("pytest --nbval-lax notebooks" in s for s in steps)  # CI validates the notebooks
    assert any("-c requirements.txt" in s for s in steps)  # with the locked versions
    batch, weekly = _commands(workflow, "run_notebooks.py")
    args = parse_options(batch)  # the runner accepts what CI passes
    assert args.pairs == [("promote", "True")] and args.as_json
    retrain = parse_options(weekly)  # the closed loop, weekly, against the team's server (docs/loop.md)
    assert retrain.only == ["06", "07"] and retrain.pairs[:2] == [("since", "7d"), ("promote", "True")]
    assert "schedule" in triggers and "schedule" in workflow["jobs"]["retrain"]["if"]
    assert workflow["jobs"]["test"]["if"] == "github.event_name != 'schedule'"
    commands = _commands(workflow, "mnistops")
    assert ["data", "fetch"] in commands and ["runs", "list", "--limit", "10"] in commands
    for words in commands:
        path_words = [w for w in words if not w.startswith("-") and not w.isdigit()]
        help_out = subprocess.run(
            [sys.executable, "-m", "mnistops", *path_words, "--help"], capture_output=True, text=True, check=False
        )
        assert help_out.returncode == 0, words
        for option in (w for w in words if w.startswith("--")):
            assert option in help_out.stdout, (words, option)
    uploads = [s for j in workflow["jobs"].values() for s in j["steps"] if "upload-artifact" in str(s.get("uses", ""))]
    assert any("outputs/" in s["with"]["path"] for s in uploads)  # the executed notebooks, HTML included
    cached = [s for j in workflow["jobs"].values() for s in j["steps"] if "actions/cache" in str(s.get("uses", ""))]
    assert any(".cache/mnistops" in s["with"]["path"] for s in cached)
    assert any(s.get("with", {}).get("cache") == "pip" for j in workflow["jobs"].values() for s in j["steps"])


def test_promote_without_a_candidate_is_one_line(store: Path) -> None:
    assert "promote needs a RUN_ID or --latest" in one_line_error(run_cli("promote"))
    assert "no tracking store at" in one_line_error(run_cli("promote", "--latest"))
    from mnistops.tracking.store import check_store

    check_store(os.environ["MLFLOW_TRACKING_URI"])  # an empty store now
    assert "experiment 'mnistops' has no runs" in one_line_error(run_cli("promote", "--latest"))
    assert "no run 'abc'" in one_line_error(run_cli("reproduce", "abc"))


# A promotion or a rollback, in a process of its own, each time a line comes on its stdin: the test
# sends both processes their line at once, ten rounds, and reads the registry between rounds.
RACER = """
import json, sys
from mnistops.config import load_config
from mnistops.lifecycle import registry
uri, role, run_id = sys.argv[1:4]
gate = load_config(overrides=["gate.tolerance=1", "gate.floor=0"]).gate  # every round's promotion passes
print("ready", flush=True)
for _ in sys.stdin:
    try:
        if role == "promote":
            decision = registry.promote(uri, run_id, gate, "mnist-classifier", force=True)
            out = {"promoted": decision.promoted} if decision.promoted else {"refused": decision.reason}
        else:
            out = {"rolled_back": list(registry.rollback(uri, "mnist-classifier"))}
    except Exception as exc:
        out = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out), flush=True)
"""


def test_a_promotion_and_a_rollback_at_once_take_turns(store: Path) -> None:
    """v2 is @champion after v1; each round `promote v3` and `rollback` start at the same moment.
    Promote then rollback leaves v2 @champion, rollback then promote v3; either way @previous is v1
    and the champion's recorded predecessor agrees. Unserialised, the promotion decided on the
    champion it read before the rollback moved it (5 of 10 rounds ended with @previous on v2)."""
    from mlflow.tracking import MlflowClient

    from mnistops import pipeline, record
    from mnistops.config import load_config

    uri = os.environ["MLFLOW_TRACKING_URI"]
    runs = [
        pipeline.train(load_config(overrides=[f"model.params.n_estimators={n}", "model.params.max_depth=8"])).run_id
        for n in (8, 9, 10)
    ]
    client, name = MlflowClient(uri), "mnist-classifier"

    def reset() -> None:  # v2 @champion, v1 @previous, as two promotions leave them
        client.set_registered_model_alias(name, record.CHAMPION, "2")
        client.set_registered_model_alias(name, record.PREVIOUS, "1")
        client.set_model_version_tag(name, "2", record.PREVIOUS_CHAMPION, "1")
        client.set_model_version_tag(name, "1", record.PREVIOUS_CHAMPION, "none")
        for version in ("1", "2", "3"):
            client.delete_model_version_tag(name, version, record.ROLLED_BACK)

    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, uri, role, runs[2]],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for role in ("promote", "rollback")
    ]
    seen = []
    try:
        assert [r.stdout.readline().strip() for r in racers if r.stdout] == ["ready", "ready"]
        for _ in range(10):
            reset()
            for r in racers:
                assert r.stdin is not None
                r.stdin.write("go\n")
                r.stdin.flush()
            promoted, rolled = (json.loads(r.stdout.readline()) for r in racers if r.stdout)
            assert promoted == {"promoted": True}, promoted
            model = client.get_registered_model(name)
            aliases = {alias: str(version) for alias, version in model.aliases.items()}
            champion_before = client.get_model_version(name, aliases["champion"]).tags[record.PREVIOUS_CHAMPION]
            seen.append(aliases["champion"])
            # Promote first: v3 replaced v2, then the rollback went back to v2 (v3 rolled back).
            # Rollback first: v1 came back (v2 rolled back), then v3 replaced it.
            assert (aliases, rolled) in (
                ({"champion": "2", "previous": "1"}, {"rolled_back": ["3", "2"]}),
                ({"champion": "3", "previous": "1"}, {"rolled_back": ["2", "1"]}),
            ), (aliases, rolled)
            assert champion_before == aliases["previous"]
    finally:
        for r in racers:
            r.kill()
            r.wait(timeout=30)
    print("champion after each round:", seen)


# Load a model as the gate and the server do, in a fresh process; say whether MLflow's check of its
# requirements was left out, and what the model predicts for one image.
LOADER = """
import sys
from pathlib import Path
import mlflow
import numpy as np
from mnistops.lifecycle import versions
mlflow.set_tracking_uri(sys.argv[1])
model = versions.load_pyfunc(sys.argv[2], sys.argv[3])
from mlflow.utils import requirements_utils  # its map of every package's modules: built by the check only
checked = requirements_utils._MODULES_TO_PACKAGES is not None
print(versions.environment_matches(Path(sys.argv[3])), checked, len(model.predict(np.zeros((1, 784), np.float32))))
"""


def test_a_model_is_checked_against_this_environment_only_where_it_differs(store: Path, tmp_path: Path) -> None:
    """A model trained here loads without MLflow's requirement check (its pins are what is
    installed); one whose requirements.txt pins another numpy still gets MLflow's warning."""
    import mlflow

    uri = os.environ["MLFLOW_TRACKING_URI"]
    train(*TINY)

    def load(model: str, into: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", LOADER, uri, model, str(into)], capture_output=True, text=True, check=False
        )

    same = load("models:/mnist-classifier/1", tmp_path / "same")
    assert same.returncode == 0, same.stderr[-2000:]
    assert same.stdout.split() == ["True", "False", "1"]
    assert "mismatches" not in same.stderr

    edited = Path(mlflow.artifacts.download_artifacts("models:/mnist-classifier/1", dst_path=str(tmp_path / "edited")))
    requirements = edited / "requirements.txt"
    pins = requirements.read_text().splitlines()
    assert any(p.startswith("numpy==") for p in pins), pins
    requirements.write_text("\n".join("numpy==1.0.0" if p.startswith("numpy==") else p for p in pins) + "\n")
    other = load(str(edited), tmp_path / "other")
    assert other.returncode == 0, other.stderr[-2000:]
    assert other.stdout.split() == ["False", "True", "1"]
    assert "Detected one or more mismatches" in other.stderr and "numpy==1.0.0" in other.stderr
