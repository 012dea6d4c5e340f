"""Config: defaults, precedence (env < file < --set), and one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnistops.config import Config, dump_yaml, env_overrides, from_notebook, load_config, notebook_values
from mnistops.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_reproduce_the_notebook_script() -> None:
    cfg = load_config(environ={})
    assert cfg.seed == 42
    assert (cfg.data.dataset, cfg.split.strategy, cfg.split.test_size) == ("mnist", "stratified", 0.2)
    assert cfg.model.name == "random_forest" and cfg.model.preprocess == "none"
    assert cfg.model.params["n_estimators"] == 150 and cfg.model.params["max_depth"] == 25


def test_seed_config_is_the_notebooks_logged_run() -> None:
    cfg = load_config(ROOT / "configs" / "seed.yaml", environ={})
    assert cfg.model.params["n_estimators"] == 120 and cfg.model.params["max_depth"] == 20


@pytest.mark.parametrize(
    "name", ["random_forest", "extra_trees", "hist_gradient_boosting", "logistic_regression", "cnn", "seed"]
)
def test_every_shipped_config_loads(name: str) -> None:
    cfg = load_config(ROOT / "configs" / f"{name}.yaml", environ={})
    assert cfg.model.name == (name if name != "seed" else "random_forest")


def test_precedence_env_then_file_then_set(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("seed: 7\nmodel:\n  params:\n    n_estimators: 30\n")
    env = {"MNISTOPS_SEED": "1", "MNISTOPS_MODEL__PARAMS__MAX_DEPTH": "9", "MNISTOPS_CACHE_DIR": "/x"}
    cfg = load_config(path, ["model.params.n_estimators=40"], environ=env)
    assert cfg.seed == 7  # file beats env
    assert cfg.model.params["max_depth"] == 9  # env applies where nothing else says
    assert cfg.model.params["n_estimators"] == 40  # --set beats file
    assert env_overrides({"MNISTOPS_CACHE_DIR": "/x", "MNISTOPS_MIRRORS": "none"}) == {}


def test_unknown_key_names_the_key_and_the_allowed_ones() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=["model.parms.n_estimators=3"], environ={})
    assert str(exc.value) == (
        "unknown config key model.parms (from --set model.parms.n_estimators=3): "
        "did you mean model.params? allowed keys here are name, params, preprocess"
    )


def test_unknown_model_param_lists_that_models_params() -> None:
    with pytest.raises(
        ConfigError,
        match=r"unknown config key model\.params\.n_trees \(from --set model\.params\.n_trees=3\): allowed keys "
        r"here are bootstrap, criterion, max_depth, .*n_estimators",
    ):
        load_config(overrides=["model.params.n_trees=3"], environ={})


def test_wrong_type_names_the_key_and_the_value() -> None:
    with pytest.raises(
        ConfigError,
        match=r"config key model\.params\.n_estimators \(from --set model\.params\.n_estimators=many\): Input "
        r"should be a valid integer.*\(got 'many'\)",
    ):
        load_config(overrides=["model.params.n_estimators=many"], environ={})


def test_negative_test_size_is_refused() -> None:
    with pytest.raises(
        ConfigError,
        match=r"config key split\.test_size \(from --set split\.test_size=-0\.2\): "
        r"Input should be greater than 0 \(got -0\.2\)",
    ):
        load_config(overrides=["split.test_size=-0.2"], environ={})


def test_unknown_model_name_lists_the_models() -> None:
    with pytest.raises(
        ConfigError,
        match=r"config key model\.name \(from --set model\.name=svm\): Input should be 'random_forest', 'extra_trees'",
    ):
        load_config(overrides=["model.name=svm"], environ={})


def test_malformed_override_and_missing_file() -> None:
    with pytest.raises(ConfigError, match="is not KEY=VALUE"):
        load_config(overrides=["seed"], environ={})
    with pytest.raises(ConfigError, match=r"config file nope\.yaml does not exist"):
        load_config("nope.yaml", environ={})


def test_hash_is_stable_and_ignores_where_runs_are_recorded(tmp_path: Path) -> None:
    a = load_config(environ={})
    b = load_config(overrides=["tracking.experiment=other", "gate.floor=0.5"], environ={})
    c = load_config(overrides=["model.params.n_estimators=151"], environ={})
    assert a.hash() == b.hash() != c.hash()
    assert len(a.hash()) == 64
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_yaml(c))
    assert load_config(path, environ={}).hash() == c.hash()  # a saved config reproduces its hash


def test_params_are_completed_with_the_models_defaults() -> None:
    cfg = Config.model_validate({"model": {"name": "extra_trees"}})
    assert cfg.model.params["n_estimators"] == 150 and cfg.model.params["bootstrap"] is False
    flat = cfg.flat()
    assert flat["model.params.n_estimators"] == 150 and flat["split.test_size"] == 0.2


# --- notebooks: their parameters are a view of the config ---------------------------------


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_config_survives_the_trip_through_notebook_parameters(name: str) -> None:
    cfg = load_config(ROOT / "configs" / f"{name}.yaml", environ={})
    values = notebook_values(cfg)
    back = from_notebook(
        {k: v for k, v in values.items() if k != "overrides"}, overrides=values["overrides"], environ={}
    )
    assert back == cfg and back.hash() == cfg.hash()


def test_notebook_values_are_short_and_name_the_forest_shortcuts() -> None:
    seed = notebook_values(load_config(ROOT / "configs" / "seed.yaml", environ={}))
    assert (seed["n_estimators"], seed["max_depth"], seed["model_params"], seed["overrides"]) == (120, 20, {}, [])
    extra = notebook_values(load_config(ROOT / "configs" / "extra_trees.yaml", environ={}))
    assert extra["max_depth"] == 0  # no limit, as the notebook writes it
    cnn = notebook_values(load_config(ROOT / "configs" / "cnn_fast.yaml", environ={}))
    assert "n_estimators" not in cnn and cnn["model_params"]["epochs"] == 2
    other = notebook_values(load_config(overrides=["gate.floor=0.9", "tracking.experiment=007x"], environ={}))
    assert other["overrides"] == ["tracking.experiment=007x", "gate.floor=0.9"]


def test_the_forest_shortcuts_apply_to_forests_only() -> None:
    cfg = from_notebook({"model": "random_forest", "n_estimators": 7, "max_depth": 0}, environ={})
    assert (cfg.model.params["n_estimators"], cfg.model.params["max_depth"]) == (7, None)
    cnn = from_notebook({"model": "cnn", "n_estimators": 7, "max_depth": 20, "model_params": {"epochs": 1}}, environ={})
    assert cnn.model.params["epochs"] == 1 and "n_estimators" not in cnn.model.params


def test_notebook_values_lie_between_the_environment_and_the_overrides(tmp_path: Path) -> None:
    env = {"MNISTOPS_SEED": "3", "MNISTOPS_MODEL__PARAMS__MIN_SAMPLES_LEAF": "2"}
    cfg = from_notebook({"seed": 42, "n_estimators": 5}, overrides=["model.params.max_depth=4"], environ=env)
    assert cfg.seed == 42  # the notebook's value beats the environment
    assert cfg.model.params["min_samples_leaf"] == 2  # the environment applies where the notebook is silent
    assert cfg.model.params["max_depth"] == 4 and cfg.model.params["n_estimators"] == 5
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: extra_trees\n")
    from_file = from_notebook({"model": "random_forest", "n_estimators": 9}, config_file=str(path), environ={})
    assert from_file.model.name == "extra_trees" and from_file.model.params["n_estimators"] == 150


def test_a_bad_notebook_value_is_one_line_naming_the_key() -> None:
    with pytest.raises(
        ConfigError,
        match=r"unknown config key model\.params\.n_trees \(from the notebook's "
        r"parameters\): allowed keys here are",
    ):
        from_notebook({"model": "random_forest", "model_params": {"n_trees": 3}}, environ={})


def test_a_yaml_error_keeps_its_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("seed: 1\nmodel:\n  params: {n_estimators: 3\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={})
    message = str(exc.value)
    assert message.startswith(f"config file {path}, line 4, column 1: while parsing a flow mapping (from line 3, ")
    assert "\n" not in message


def test_errors_name_where_the_bad_value_came_from_and_the_closest_key(tmp_path: Path) -> None:
    env = {"MNISTOPS_MODEL__PARAMS__N_ESTIMATORS": "lots"}
    with pytest.raises(ConfigError, match=r"\(from environment variable MNISTOPS_MODEL__PARAMS__N_ESTIMATORS\)"):
        load_config(environ=env)
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  params:\n    n_estimater: 3\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={})
    assert str(exc.value).startswith(
        f"unknown config key model.params.n_estimater (from config file {path}): "
        "did you mean model.params.n_estimators? allowed keys here are"
    )
    with pytest.raises(
        ConfigError,
        match=r"unknown config key trackin \(from --set trackin\.uri=x\): did you "
        r"mean tracking\?",
    ):
        load_config(overrides=["trackin.uri=x"], environ={})
