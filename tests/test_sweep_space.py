"""Search spaces and grid files: every mistake is one line naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnistops.errors import ConfigError
from mnistops.runner.grid import point_parameters, read_grid
from mnistops.sweep.space import load_space

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "space").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_space_loads_and_fits_its_model(path: Path) -> None:
    space = load_space(path)
    assert space.model == path.stem
    assert set(space.distributions()) == set(space.params)


def test_a_space_turns_into_optunas_distributions(tmp_path: Path) -> None:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    f = tmp_path / "s.yaml"
    f.write_text(
        "model: random_forest\nparams:\n  n_estimators: {type: int, low: 10, high: 40, step: 10}\n"
        "  max_features: {type: float, low: 0.01, high: 0.5, log: true}\n"
        "  criterion: {type: categorical, choices: [gini, entropy]}\n"
    )
    space = load_space(f)
    d = space.distributions()
    assert d["n_estimators"] == IntDistribution(10, 40, step=10)
    assert d["max_features"] == FloatDistribution(0.01, 0.5, log=True)
    assert d["criterion"] == CategoricalDistribution(["gini", "entropy"])
    assert space.metric == "accuracy" and space.direction == "maximize"
    f.write_text("model: hist_gradient_boosting\nmetric: log_loss\nparams:\n  max_iter: {type: int, low: 5, high: 9}\n")
    assert load_space(f).direction == "minimize"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "model: random_forest\nparams:\n  n_estimator: {type: int, low: 1, high: 9}\n",
            "random_forest has no parameter 'n_estimator': did you mean n_estimators? it accepts bootstrap, criterion",
        ),
        (
            "model: random_forest\nparams:\n  n_estimators: {type: int, low: 0, high: 9}\n",
            "params.n_estimators: random_forest refuses 0 (Input should be greater than or equal to 1): "
            "narrow the range",
        ),
        (
            "model: random_forest\nparams:\n  max_depth: {type: int, low: 9, high: 3}\n",
            "params.max_depth: low 9 is above high 3",
        ),
        (
            "model: random_forest\nparams:\n  max_depth: {type: integer, low: 1, high: 3}\n",
            "params.max_depth: Input tag 'integer' found using 'type' does not match any of the expected tags",
        ),
        (
            "model: random_forest\nparams:\n  criterion: {type: categorical, choices: [gini, cosine]}\n",
            "params.criterion: random_forest refuses 'cosine'",
        ),
        ("model: random_forest\nparams: {}\n", "params: Dictionary should have at least 1 item"),
        ("model: forest\nparams:\n  a: {type: int, low: 1, high: 2}\n", "model: Input should be 'random_forest'"),
        (
            "model: random_forest\nmetric: speed\nparams:\n  max_depth: {type: int, low: 1, high: 3}\n",
            "metric: Input should be 'accuracy'",
        ),
        ("model: random_forest\nparams:\n  max_depth: {type: int, low: 1, high: 3\n", "line 4, column 1"),
    ],
    ids=[
        "unknown-parameter",
        "refused-bound",
        "reversed",
        "unknown-type",
        "refused-choice",
        "empty",
        "unknown-model",
        "unknown-metric",
        "malformed-yaml",
    ],
)
def test_a_bad_space_is_one_line_naming_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "space.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_space(f)
    line = str(exc.value)
    assert "\n" not in line and line.startswith(f"search space {f}"), line
    assert message in line, line


def test_a_grid_is_its_lists_crossed_in_file_order(tmp_path: Path) -> None:
    f = tmp_path / "grid.yaml"
    f.write_text("n_estimators: [4, 8]\nmax_depth: [6, 10, 0]\n")
    lists, points = read_grid(f)
    assert lists == {"n_estimators": [4, 8], "max_depth": [6, 10, 0]}
    assert points == [{"n_estimators": n, "max_depth": d} for n in (4, 8) for d in (6, 10, 0)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("n_estimators: 4\n", "n_estimators must be a non-empty list of values"),
        ("n_estimators: []\n", "must be a non-empty list"),
        ("- 1\n- 2\n", "must hold a mapping"),
    ],
)
def test_a_bad_grid_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "grid.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_grid(f)


def test_a_grid_point_reaches_only_the_notebooks_that_declare_its_names() -> None:
    from mnistops.runner.notebooks import discover

    notebooks = discover(ROOT / "notebooks")
    plan = {nb.name: {} for nb in notebooks}
    out = point_parameters(plan, notebooks, {"n_estimators": 7, "n_images": 3})
    declares = {nb.name: set(nb.parameters) for nb in notebooks}
    for name, values in out.items():
        assert values.get("n_estimators") == (7 if "n_estimators" in declares[name] else None)
        assert ("n_images" in values) == ("n_images" in declares[name])
    assert any("n_estimators" in v for v in out.values())
