"""The runner's plan: which notebooks, what each declares, what each is given (no kernels here)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest

from mnistops import threadsafe_ast
from mnistops.config import load_config
from mnistops.errors import ConfigError, DataError
from mnistops.runner import params
from mnistops.runner.notebooks import check_needs, default_value, discover, parse_parameters, parse_python, read

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def write_notebook(path: Path, parameters: str, batch: bool = True) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if not batch:
        nb.metadata["mnistops"] = {"batch": False}
    nb.cells = [
        nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("x = 1"),
    ]
    nbformat.write(nb, path)
    return path


def test_the_suite_in_run_order_with_what_each_declares() -> None:
    suite = discover(NOTEBOOKS)
    assert [nb.name for nb in suite] == ["01_explore", "02_validate", "03_train", "04_evaluate"]
    by_name = {nb.name: nb for nb in suite}
    train = by_name["03_train"].parameters
    assert {
        "dataset",
        "seed",
        "split",
        "model",
        "n_estimators",
        "max_depth",
        "model_params",
        "overrides",
        "config_file",
        "batch_run_id",
    } <= set(train)
    assert train["n_estimators"].type == "int" and default_value(train["n_estimators"]) == 120
    assert train["n_estimators"].help.startswith("trees")
    assert set(by_name["04_evaluate"].parameters) == {"run_id", "experiment", "promote"}
    assert all(len(nb.sha256) == 64 for nb in suite)
    # What each hands on and takes, and which may be reused (mnistops.runner.reuse).
    assert by_name["03_train"].makes == {"training_run_id": "str"}
    assert by_name["04_evaluate"].takes == {"run_id": "training_run_id"}
    assert [nb.name for nb in suite if nb.takes or nb.makes] == ["03_train", "04_evaluate"]
    everything = {nb.name: nb for nb in discover(NOTEBOOKS, ["05", "06", "07"])}
    assert all(nb.reusable for nb in suite) and not any(nb.reusable for nb in everything.values())


def test_a_notebook_taking_what_no_earlier_one_makes_is_refused(tmp_path: Path) -> None:
    suite = discover(NOTEBOOKS)
    check_needs(suite, {})  # 03 makes what 04 takes
    evaluate = [nb for nb in suite if nb.name == "04_evaluate"]
    with pytest.raises(ConfigError, match="notebook 04_evaluate takes run_id from training_run_id, which no notebook"):
        check_needs(evaluate, {})
    check_needs(evaluate, {"04_evaluate": {"run_id": "abc"}})  # given with -p
    shutil.copy(NOTEBOOKS / "04_evaluate.ipynb", tmp_path / "04_evaluate.ipynb")
    raw = json.loads((tmp_path / "04_evaluate.ipynb").read_text())
    raw["metadata"]["mnistops"]["takes"] = {"no_such_parameter": "training_run_id"}
    (tmp_path / "04_evaluate.ipynb").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=r"its metadata's mnistops\.takes must map its parameters to values"):
        discover(tmp_path)


def test_our_parameter_parser_reads_every_notebook_as_papermill_does() -> None:
    import papermill

    for nb in discover(NOTEBOOKS):
        theirs = papermill.inspect_notebook(str(nb.path))
        ours = {n: (p.type if p.type != "any" else "None", p.default, p.help) for n, p in nb.parameters.items()}
        assert ours == {n: (p["inferred_type_name"], p["default"], p["help"]) for n, p in theirs.items()}


def test_our_parameter_parser_on_the_cases_papermill_handles_oddly() -> None:
    from nbformat.v4 import new_code_cell
    from papermill.translators import PythonTranslator

    source = 'a: int = 1  # one\nb = {"x": 1,\n     "y": 2}  # spans lines\nc: str = "k=v"  # two "=": skipped\n# c\n'
    ours = parse_parameters(source)
    theirs = PythonTranslator.inspect(new_code_cell(source))
    assert [(p.name, p.default, p.help) for p in ours.values()] == [(p.name, p.default, p.help) for p in theirs]
    assert list(ours) == ["a", "b"]


def test_content_hash_ignores_outputs_but_not_code(tmp_path: Path) -> None:
    path = write_notebook(tmp_path / "01_a.ipynb", "n: int = 1")
    before = read(path).sha256
    nb = nbformat.read(path, as_version=4)
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello")]
    nb.cells[1].execution_count = 3
    nbformat.write(nb, path)
    assert read(path).sha256 == before
    nb.cells[1].source = "x = 2"
    nbformat.write(nb, path)
    assert read(path).sha256 != before


def test_only_picks_by_name_file_or_number_and_keeps_run_order(tmp_path: Path) -> None:
    for name in ("01_a", "02_b", "03_c"):
        write_notebook(tmp_path / f"{name}.ipynb", "n: int = 1")
    write_notebook(tmp_path / "05_server.ipynb", "port: int = 0", batch=False)
    (tmp_path / "scratch.ipynb").write_text("{}")  # not numbered: never part of a batch
    assert [nb.name for nb in discover(tmp_path)] == ["01_a", "02_b", "03_c"]
    assert [nb.name for nb in discover(tmp_path, ["03", "01_a.ipynb", "05_server"])] == ["01_a", "03_c", "05_server"]
    with pytest.raises(ConfigError, match=r"--only '04' names no notebook: choose from 01_a, 02_b, 03_c, 05_server"):
        discover(tmp_path, ["04"])
    with pytest.raises(ConfigError, match="does not exist"):
        discover(tmp_path / "missing")


def test_a_broken_notebook_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "01_bad.ipynb").write_text("not json")
    with pytest.raises(DataError, match=r"cannot read notebook .*01_bad\.ipynb.*Jupyter \.ipynb"):
        discover(tmp_path)


def test_p_values_are_read_as_the_declared_type() -> None:
    suite = discover(NOTEBOOKS)
    cfg = load_config(environ={})
    pairs = [
        ("n_estimators", "7"),
        ("experiment", "007"),
        ("promote", "yes"),
        ("model_params", "{min_samples_leaf: 2}"),
        ("test_size", "0.25"),
    ]
    plan = params.plan(suite, cfg, pairs=pairs)
    assert plan["03_train"]["n_estimators"] == 7
    assert plan["04_evaluate"]["experiment"] == "007"  # a string stays a string (papermill makes it 7)
    assert plan["04_evaluate"]["promote"] is True
    assert plan["03_train"]["model_params"] == {"min_samples_leaf": 2}
    assert plan["02_validate"]["test_size"] == plan["03_train"]["test_size"] == 0.25
    with pytest.raises(ConfigError, match=r"-p n_estimators 'many': 03_train declares n_estimators as int"):
        params.plan(suite, cfg, pairs=[("n_estimators", "many")])
    with pytest.raises(ConfigError, match=r"-p overrides 'x': 03_train wants a list"):
        params.plan(suite, cfg, pairs=[("overrides", "x")])


def test_each_notebook_gets_only_what_it_declares_config_then_files_then_p(tmp_path: Path) -> None:
    suite = discover(NOTEBOOKS)
    cfg = load_config(ROOT / "configs" / "random_forest.yaml", ["seed=7"], environ={})
    file = tmp_path / "p.yaml"
    file.write_text("samples_per_class: 3\nseed: 8\n")
    plan = params.plan(suite, cfg, files=[file], pairs=[("seed", "9")])
    assert plan["01_explore"] == {"dataset": "mnist", "source": "auto", "seed": 9, "samples_per_class": 3}
    assert plan["03_train"]["n_estimators"] == 150 and plan["03_train"]["max_depth"] == 25
    assert plan["03_train"]["seed"] == 9
    assert plan["04_evaluate"] == {}
    plan = params.plan(suite, cfg, files=[file])
    assert plan["02_validate"]["seed"] == 8


def test_an_undeclared_name_is_refused_with_every_notebooks_parameters(tmp_path: Path) -> None:
    suite = discover(NOTEBOOKS)
    cfg = load_config(environ={})
    with pytest.raises(ConfigError) as exc:
        params.plan(suite, cfg, pairs=[("n_trees", "7")])
    message = str(exc.value)
    assert message.startswith("-p n_trees: no notebook of this batch declares it; they declare 01_explore: dataset")
    assert "03_train: dataset: str" in message and "n_estimators: int" in message and "\n" not in message
    file = tmp_path / "p.yaml"
    file.write_text("n_trees: 7\n")
    with pytest.raises(ConfigError, match=r"-f .*p\.yaml: n_trees: no notebook of this batch declares it"):
        params.plan(suite, cfg, files=[file])
    file.write_text("- a list\n")
    with pytest.raises(ConfigError, match=r"-f parameters file .*p\.yaml must hold a mapping of names to values"):
        params.plan(suite, cfg, files=[file])
    with pytest.raises(ConfigError, match=r"-f parameters file .*none\.yaml does not exist"):
        params.plan(suite, cfg, files=[tmp_path / "none.yaml"])


def test_without_config_the_base_is_the_training_notebooks_defaults() -> None:
    from mnistops.config import notebook_mapping

    base = params.base_config_values(discover(NOTEBOOKS))
    cfg = load_config(None, [], environ={}, base=notebook_mapping(base))
    seed = load_config(ROOT / "configs" / "seed.yaml", environ={})
    assert cfg.hash() == seed.hash()  # `make run` trains what configs/seed.yaml says


def test_the_runner_refuses_before_anything_runs(tmp_path: Path) -> None:
    """An undeclared parameter: exit 2, one line, no store, no output folder."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run_notebooks.py"), "-p", "n_trees", "7", "--out", str(tmp_path / "out")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: -p n_trees: no notebook of this batch declares it")
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no store, no outputs


def test_run_notebooks_help_names_every_option() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run_notebooks.py"), "--help"], capture_output=True, text=True, check=True
    )
    for option in (
        "--config",
        "--set",
        "-p NAME VALUE",
        "-f PARAMS.yaml",
        "--only",
        "--force",
        "--resume",
        "--out",
        "--json",
    ):
        assert option in proc.stdout


class _Finalised:
    """Cyclic garbage whose finalizer runs Python code: the garbage collector then switches
    threads in the middle of building an AST, as it does in a busy batch."""

    def __del__(self) -> None:
        sum(range(50))


def _parse_in_threads(parse: Callable[[str], object], depths: tuple[int, ...]) -> list[str]:
    """``parse`` a module in one thread per depth (each from that deep a stack, so that their
    recursion counts differ); the SystemErrors they met."""
    import threading

    source = "\n".join(
        f"def f{i}(a, b=[1, 2, {{3: (4, 5)}}]):\n    return [x * {i} for x in range(a) if x % 2]" for i in range(100)
    )
    errors: list[str] = []

    def worker(depth: int) -> None:
        if depth:
            return worker(depth - 1)
        for _ in range(50):
            junk = _Finalised()
            junk.self = junk  # type: ignore[attr-defined]
            del junk
            try:
                parse(source)
            except SystemError as exc:
                errors.append(str(exc))

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=worker, args=(d,)) for d in depths]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    return errors


def test_cells_are_parsed_safely_beside_other_threads_parsing() -> None:
    # CPython 3.11 (python/cpython#106905): threads that parse at once can fail with "AST
    # constructor recursion depth mismatch", as one grid test did. Ours take turns.
    assert _parse_in_threads(parse_python, (0, 40, 80)) == []
    # Libraries call ast.parse themselves (ast.literal_eval, traceback, Jinja's lexer); once the
    # guard is installed (parse_python did), theirs take turns with ours too.
    import ast

    assert getattr(ast.parse, "__mnistops_guarded__", False) == threadsafe_ast.NEEDED
    assert _parse_in_threads(ast.parse, (0, 40, 80)) == []
    assert _parse_in_threads(lambda s: ast.literal_eval(f"[{len(s)}, 2.5, {{'a': (1, 2)}}]"), (0, 40, 80)) == []


def test_the_suite_runs_explore_validate_and_train_side_by_side_and_evaluation_after_training() -> None:
    from mnistops.runner.schedule import Schedule, dependencies

    suite = discover(NOTEBOOKS)
    names = [nb.name for nb in suite]
    waits = {names[i]: {names[j] for j in w} for i, w in enumerate(dependencies(suite))}
    assert waits == {"01_explore": set(), "02_validate": set(), "03_train": set(), "04_evaluate": {"03_train"}}
    plan = Schedule(suite)
    # The training first (the evaluation waits for it), then the run order.
    assert [names[i] for i in plan.order] == ["03_train", "01_explore", "02_validate", "04_evaluate"]
    assert Schedule(suite, side_by_side=False).order == [0, 1, 2, 3]  # --jobs 1: the run order
    assert [names[i] for i in plan.ready(set(), set())] == ["03_train", "01_explore", "02_validate"]
    assert [names[i] for i in plan.ready({0, 1}, {0, 1, 2})] == []  # 04 waits for 03
    assert [names[i] for i in plan.ready({2}, {0, 1, 2})] == ["04_evaluate"]
    # Notebooks that declare no `after` wait for every notebook before them.
    everything = discover(NOTEBOOKS, ["01", "02", "03", "04", "05", "06", "07"])
    later = {everything[i].name: len(w) for i, w in enumerate(dependencies(everything))}
    assert later["05_serve"] == 4 and later["06_monitor"] == 5 and later["07_retrain"] == 6


def test_after_is_read_checked_and_ignores_notebooks_left_out(tmp_path: Path) -> None:
    from mnistops.runner.schedule import Schedule, default_jobs, dependencies

    assert default_jobs() >= 1
    write_notebook(tmp_path / "01_a.ipynb", "n: int = 1")
    write_notebook(tmp_path / "02_b.ipynb", "n: int = 1")
    write_notebook(tmp_path / "03_c.ipynb", "n: int = 1")

    def declare(name: str, after: object) -> None:
        raw = json.loads((tmp_path / name).read_text())
        raw["metadata"]["mnistops"] = {"after": after}
        (tmp_path / name).write_text(json.dumps(raw))

    declare("02_b.ipynb", [])
    declare("03_c.ipynb", ["01_a.ipynb"])
    suite = discover(tmp_path)
    assert [nb.after for nb in suite] == [None, (), ("01_a",)]
    assert dependencies(suite) == [set(), set(), {0}]
    assert [suite[i].name for i in Schedule(suite).order] == ["01_a", "02_b", "03_c"]
    assert dependencies(discover(tmp_path, ["02", "03"])) == [set(), set()]  # 01_a is not in this batch
    declare("01_a.ipynb", ["03_c"])
    with pytest.raises(ConfigError, match="notebook 01_a runs after 03_c, which comes after it in the run order"):
        dependencies(discover(tmp_path))
    declare("01_a.ipynb", "03_c")
    with pytest.raises(ConfigError, match=r"01_a\.ipynb: its metadata's mnistops\.after must list the notebooks"):
        discover(tmp_path)


def test_the_progress_display_has_a_live_line_for_every_running_notebook() -> None:
    import io

    from rich.console import Console

    from mnistops.cli.notebooks import RichBatchProgress
    from mnistops.runner.batch import NotebookRun

    display = RichBatchProgress()
    display.err, display.live = Console(file=io.StringIO(), force_terminal=True, width=150), True
    with display:
        display.notebook_started("03_train", 18)
        display.notebook_started("01_explore", 21)
        display.cell_started("03_train", 5, "result = train(cfg, progress=TextProgress())")
        display.cell_started("01_explore", 7, "explore.sample_grid(ds, per_class=3)")
        display.notebook_started("02_validate", 12)
        display.notebook_finished(NotebookRun("02_validate", "completed", 0.6))
        screen = Console(file=io.StringIO(), record=True, width=150)
        screen.print(display.progress.get_renderable())
    lines = [ln for ln in screen.export_text().splitlines() if ln.strip()]
    assert len(lines) == 3
    assert "03_train cell 6: result = train(cfg, progress=TextProgress())" in lines[0] and "5/18" in lines[0]
    assert "01_explore cell 8: explore.sample_grid(ds, per_class=3)" in lines[1] and "7/21" in lines[1]
    assert "✓ 02_validate" in lines[2] and "12/12" in lines[2]


@pytest.mark.parametrize(
    "uri",
    ["sqlite:////tmp/x/mlflow.db", "sqlite:///mlflow.db", "sqlite:///~/m.db", "sqlite:///a%20b.db", "sqlite://"],
)
def test_a_new_store_is_known_without_sqlalchemy_as_sqlalchemy_reads_the_uri(uri: str, tmp_path: Path) -> None:
    from sqlalchemy.engine import make_url

    from mnistops.runner.reuse import store_is_new
    from mnistops.tracking.store import sqlite_path

    database = make_url(uri).database
    expected = Path(database).expanduser().resolve() if database else None
    assert sqlite_path(uri) == expected
    assert store_is_new(uri) == (expected is not None and not expected.exists())
    made = tmp_path / "made.db"
    made.touch()
    assert not store_is_new(f"sqlite:///{made}") and store_is_new(f"sqlite:///{tmp_path / 'new.db'}")
    assert not store_is_new("postgresql://u@127.0.0.1/db")  # only a SQLite file is known to be new
