"""Model behaviour on real MNIST rows: learns, is deterministic, and batching changes nothing."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mnistops.data.dataset import Dataset, to_features
from mnistops.train.models import PARAMS, build_model

SMALL = {
    "random_forest": {"n_estimators": 23, "max_depth": 12},
    "extra_trees": {"n_estimators": 23},
    "hist_gradient_boosting": {"max_iter": 15},
    "logistic_regression": {"max_iter": 50},
}


@pytest.fixture(scope="module")
def small(mnist: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    rows = rng.permutation(mnist.n_samples)[:3000]
    x = mnist.features(rows)
    y = mnist.labels[rows]
    return x[:2000], y[:2000], x[2000:], y[2000:]


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "hist_gradient_boosting" else n for n in SMALL]
)
def test_each_model_learns(name: str, small: tuple[np.ndarray, ...]) -> None:
    x, y, xt, yt = small
    model = build_model(name, SMALL[name], "standard" if name == "logistic_regression" else "none", seed=42)
    model.fit(x, y)
    proba = model.predict_proba(xt)
    assert proba.shape == (1000, 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert (proba.argmax(1) == yt).mean() > 0.8


def test_forest_grown_in_batches_equals_one_fit(small: tuple[np.ndarray, ...]) -> None:
    from sklearn.ensemble import RandomForestClassifier

    x, y, xt, _ = small
    ours = build_model("random_forest", SMALL["random_forest"], seed=7)
    ours.fit(x, y)  # 23 trees grown as 3+3+...+2 with warm_start
    ref = RandomForestClassifier(
        random_state=7, **PARAMS["random_forest"].model_validate(SMALL["random_forest"]).model_dump()
    ).fit(x, y)
    ref.set_params(n_jobs=1)  # threaded voting sums in a racy order; compare the trees exactly
    np.testing.assert_array_equal(ours.predict_proba(xt), ref.predict_proba(xt))


def test_forest_keeps_its_trees_packed_not_in_memory(small: tuple[np.ndarray, ...]) -> None:
    import joblib

    x, y, _, _ = small
    model = build_model("random_forest", SMALL["random_forest"], seed=7)
    model.fit(x, y)
    assert model.estimator.estimators_ == [None] * 23  # no fitted tree is held
    batches = [joblib.load(io.BytesIO(blob)) for blob in model.packed_trees]
    assert [len(b) for b in batches] == [3] * 7 + [2]
    assert all(type(t).__name__ == "DecisionTreeClassifier" for b in batches for t in b)
    packed = sum(len(blob) for blob in model.packed_trees)
    unpacked = sum(len(pickle.dumps(t)) for b in batches for t in b)
    assert packed < unpacked / 3


@pytest.mark.parametrize("preprocess", ["none", "standard"])
def test_forest_scores_held_out_rows_as_it_grows(preprocess: str, small: tuple[np.ndarray, ...]) -> None:
    x, y, xt, yt = small
    model = build_model("random_forest", SMALL["random_forest"], preprocess, seed=5)
    steps: list[tuple[int, dict[str, float]]] = []
    model.fit(x, y, on_epoch=lambda step, values: steps.append((step, values)), held_out=(xt, yt))
    assert model.held_out_proba is not None
    np.testing.assert_array_equal(model.held_out_proba, model.predict_proba(xt))  # bit for bit
    assert [s for s, _ in steps] == [3, 6, 9, 12, 15, 18, 21, 23]
    final = (model.predict_proba(xt).argmax(1) == yt).mean()
    assert steps[-1][1]["held_out_accuracy"] == pytest.approx(final)
    assert steps[0][1]["held_out_accuracy"] < final  # 3 trees do worse than 23


def test_held_out_images_score_like_their_features(small: tuple[np.ndarray, ...], mnist: Dataset) -> None:
    x, y, _, _ = small
    images, labels = mnist.images[-2500:], mnist.labels[-2500:]  # more rows than one block
    model = build_model("extra_trees", SMALL["extra_trees"], "standard", seed=2)
    model.fit(x, y, held_out=(images, labels))
    assert model.held_out_proba is not None
    np.testing.assert_array_equal(model.held_out_proba, model.predict_proba(to_features(images)))


def test_same_seed_same_model_other_seed_other_model(small: tuple[np.ndarray, ...]) -> None:
    x, y, xt, _ = small
    probas = []
    for seed in (1, 1, 2):
        m = build_model("extra_trees", SMALL["extra_trees"], seed=seed)
        m.fit(x, y)
        probas.append(m.predict_proba(xt))
    np.testing.assert_array_equal(probas[0], probas[1])
    assert not np.array_equal(probas[0], probas[2])


def test_uint8_images_and_float_rows_give_the_same_features(mnist: Dataset) -> None:
    images = mnist.images[:50]
    as_floats = images.reshape(50, 784).astype(np.float32) / 255.0
    np.testing.assert_array_equal(to_features(images), as_floats)
    np.testing.assert_array_equal(to_features(as_floats), as_floats)
    np.testing.assert_array_equal(mnist.features(np.arange(50)), as_floats)


def test_saved_model_answers_like_the_fitted_one(tmp_path: Path, small: tuple[np.ndarray, ...], mnist: Dataset) -> None:
    from mnistops.train.pyfunc_model import MnistClassifier

    x, y, xt, _ = small
    model = build_model("random_forest", SMALL["random_forest"], "standard", seed=3)
    model.fit(x, y)
    model.save(tmp_path / "m")
    loaded = MnistClassifier()
    loaded.load_context(SimpleNamespace(artifacts={"model_dir": str(tmp_path / "m")}))
    frame = loaded.predict(None, xt)
    np.testing.assert_array_equal(frame[[f"prob_{i}" for i in range(10)]].to_numpy(), model.predict_proba(xt))
    assert frame["label"].tolist() == model.predict_proba(xt).argmax(1).tolist()
    by_images = loaded.predict(None, mnist.images[:20])
    by_floats = loaded.predict(None, mnist.features(np.arange(20)))
    assert by_images.equals(by_floats)
