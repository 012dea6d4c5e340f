"""Monitoring's statistics on real MNIST: false alarms on clean batches, power against each shift,
the shifts themselves, and the batch file's checks. No store, no server."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnistops.data.dataset import Dataset
from mnistops.errors import ConfigError, DataError, MnistopsError
from mnistops.evaluate import reference
from mnistops.evaluate.features import FEATURES, image_features
from mnistops.monitor import checks, simulate
from mnistops.monitor.watch import parse_duration, read_batch
from support import shared_folder


@pytest.fixture(scope="module")
def watched(mnist: Dataset, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A forest trained on the stratified split's training rows, and its reference, as ``train`` makes it.

    Built once for the session, by whichever xdist worker asks first, and read back from a file by
    the others (the forest takes about 20 s of CPU; its file loads in a fraction of a second)."""
    import joblib

    def build(folder: Path) -> None:
        from sklearn.ensemble import RandomForestClassifier

        from mnistops.data.split import make_split

        split = make_split(mnist, "stratified", 0.2, 42)
        x_train, y_train = mnist.images[split.train], mnist.labels[split.train]
        forest = RandomForestClassifier(40, max_depth=18, n_jobs=-1, random_state=0)
        forest.fit(x_train.reshape(-1, 784) / 255, y_train)
        x_test, y_test = mnist.images[split.test], mnist.labels[split.test]
        profile = reference.input_profile(x_train, y_train, 42)
        ref = reference.complete(profile, forest.predict_proba(x_test.reshape(-1, 784) / 255), y_test)
        joblib.dump({"forest": forest, "ref": ref, "images": x_test, "labels": y_test}, folder / "watched.joblib")

    watched: dict[str, Any] = joblib.load(shared_folder(tmp_path_factory, "monitor-watched", build) / "watched.joblib")
    return watched


@pytest.fixture(scope="module")
def fashion() -> np.ndarray:
    from mnistops.data import sources

    return sources.load("fashion-mnist").images


def verdicts(
    watched: dict[str, Any], kind: str, n: int, fashion: np.ndarray | None = None, batches: int = 20
) -> collections.Counter[str]:
    out: collections.Counter[str] = collections.Counter()
    for seed in range(batches):
        x, _ = simulate.shifted(watched["images"], watched["labels"], kind, n, "moderate", seed, fashion)
        proba = watched["forest"].predict_proba(x.reshape(-1, 784) / 255)
        out[checks.compare(watched["ref"], x, proba.argmax(1), proba.max(1), seed).verdict] += 1
    return out


@pytest.mark.slow
def test_clean_batches_raise_at_most_one_false_alarm_in_twenty(watched: dict[str, Any]) -> None:
    got = verdicts(watched, "none", 500)
    print("clean:", dict(got))
    assert got["drift"] <= 1


@pytest.mark.slow
@pytest.mark.parametrize("kind", [k for k in simulate.KINDS if k != "none"])
def test_each_moderate_shift_is_flagged_in_nineteen_of_twenty(
    watched: dict[str, Any], fashion: np.ndarray, kind: str
) -> None:
    got = verdicts(watched, kind, 500, fashion)
    print(kind, dict(got))
    assert got["drift"] >= 19


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["invert", "fashion"])
def test_invert_and_fashion_are_flagged_every_time_at_100(
    watched: dict[str, Any], fashion: np.ndarray, kind: str
) -> None:
    assert verdicts(watched, kind, 100, fashion) == {"drift": 20}


def test_a_result_explains_every_check(watched: dict[str, Any]) -> None:
    x, _ = simulate.shifted(watched["images"], watched["labels"], "none", 200, seed=3)
    proba = watched["forest"].predict_proba(x.reshape(-1, 784) / 255)
    result = checks.compare(watched["ref"], x, proba.argmax(1), proba.max(1)).to_dict()
    assert [c["name"] for c in result["checks"]] == list(checks.EXPLAIN)
    for c in result["checks"]:
        assert c["verdict"] in ("ok", "warn", "drift") and 0 <= c["p_value"] <= 1
        assert len(c["explanation"]) > 80 and c["explanation"].count(". ") <= 1  # one sentence
    assert set(result["checks"][0]["details"]) == {*FEATURES, *(f"pca_{i}" for i in range(1, 11))}


def test_features_read_what_they_say() -> None:
    image = np.zeros((1, 28, 28), np.uint8)
    image[0, 4:24, 12:15] = 255  # a bar 20 tall, 3 wide
    f = dict(zip(FEATURES, image_features(image)[0], strict=True))
    assert f["height"] == 20 and f["width"] == 3 and f["stroke_width"] == 3 and f["crossings"] == 1
    assert f["centroid_row"] == pytest.approx(13.5) and f["centroid_col"] == pytest.approx(13.0)
    assert f["ink_fraction"] == pytest.approx(60 / 784) and f["bright_fraction"] == pytest.approx(60 / 784)
    assert f["mean_intensity"] == pytest.approx(255 * 60 / 784)


def test_shifts_are_seeded_and_do_what_they_say(mnist: Dataset) -> None:
    images, labels = mnist.images[-2000:], mnist.labels[-2000:]
    a, la = simulate.shifted(images, labels, "rotate", 50, seed=1)
    b, lb = simulate.shifted(images, labels, "rotate", 50, seed=1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    clean, _ = simulate.shifted(images, labels, "none", 300, seed=2)
    inverted, _ = simulate.shifted(images, labels, "invert", 300, seed=2)
    np.testing.assert_array_equal(inverted, 255 - clean)
    _, sl = simulate.shifted(images, labels, "label-skew", 300, "severe", seed=2)
    assert np.sort(np.bincount(sl, minlength=10))[-3:].sum() >= 0.9 * 300
    small, _ = simulate.shifted(images, labels, "scale", 300, seed=2)
    assert image_features(small)[:, FEATURES.index("height")].mean() < 0.8 * image_features(clean)[:, 4].mean()
    thick, _ = simulate.shifted(images, labels, "thicken", 300, seed=2)
    ink = FEATURES.index("ink_fraction")
    assert image_features(thick)[:, ink].mean() > 1.3 * image_features(clean)[:, ink].mean()
    with pytest.raises(ConfigError, match="unknown shift 'tilt': choose from none, rotate"):
        simulate.shifted(images, labels, "tilt", 10)
    with pytest.raises(ConfigError, match="unknown severity 'huge'"):
        simulate.shifted(images, labels, "rotate", 10, "huge")


def test_a_batch_file_is_checked_before_anything_runs(tmp_path: Path) -> None:
    good = tmp_path / "good.npz"
    np.savez(good, images=np.zeros((3, 784), np.uint8))
    assert read_batch(good).shape == (3, 28, 28)
    cases = {
        "shape.npz": ({"images": np.zeros((3, 28, 27), np.uint8)}, "images have shape [3, 28, 27]"),
        "empty.npz": ({"images": np.zeros((0, 28, 28), np.uint8)}, "expected (n, 28, 28) or (n, 784), n >= 1"),
        "floats.npz": ({"images": np.zeros((2, 28, 28))}, "images must be integers 0..255"),
        "named.npz": ({"x": np.zeros((2, 28, 28), np.uint8)}, "holds ['x'], no 'images' array"),
    }
    for name, (arrays, message) in cases.items():
        np.savez(tmp_path / name, **arrays)  # type: ignore[arg-type]
        with pytest.raises(DataError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            read_batch(tmp_path / name)
    with pytest.raises(DataError, match="no batch file at"):
        read_batch(tmp_path / "missing.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(DataError, match=r"is not a readable \.npz file"):
        read_batch(tmp_path / "text.npz")


def test_durations() -> None:
    assert parse_duration("24h") == 86400 and parse_duration("30m") == 1800 and parse_duration("1.5d") == 129600
    assert parse_duration("90s") == 90 and parse_duration("2w") == 1209600
    with pytest.raises(MnistopsError, match="is not a duration or a time: use a number and a unit"):
        parse_duration("yesterday")
    from mnistops.monitor.watch import window_start

    assert window_start("2h", 10_000.0) == 2800.0
    assert window_start("1970-01-01T01:00:00Z", 0) == 3600.0 == window_start("1970-01-01T01:00:00", 0)
    assert window_start("1970-01-01T02:00:00+01:00", 0) == 3600.0


# Where the confidence-based estimate holds (the model's confidence stays calibrated under the
# shift) and where it overstates accuracy (inputs unlike the training digits, on which a forest is
# confidently wrong): measured here on the 40-tree forest, 5 batches of 500 per kind, moderate.
ESTIMATE_HOLDS = ("none", "noise", "thicken", "label-skew")
ESTIMATE_OVERSTATES = ("rotate", "blur", "invert", "scale")


@pytest.fixture(scope="module")
def estimates(watched: dict[str, Any], fashion: np.ndarray) -> dict[str, tuple[float, float]]:
    """Per moderate shift kind: the true accuracy and the estimate, each the mean of 5 batches of 500."""
    from mnistops.evaluate import performance

    ref, out = watched["ref"], {}
    for kind in simulate.KINDS:
        true, est = [], []
        for seed in range(5):
            x, y = simulate.shifted(watched["images"], watched["labels"], kind, 500, "moderate", seed, fashion)
            proba = watched["forest"].predict_proba(x.reshape(-1, 784) / 255)
            true.append(float(np.mean(proba.argmax(1) == y)))
            est.append(performance.estimate(proba.max(1), ref.calibration_x, ref.calibration_y).accuracy)
        out[kind] = (float(np.mean(true)), float(np.mean(est)))
    print({k: (round(t, 3), round(e, 3)) for k, (t, e) in out.items()})
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ESTIMATE_HOLDS)
def test_the_estimate_lies_within_five_points_where_confidence_stays_calibrated(
    estimates: dict[str, tuple[float, float]], kind: str
) -> None:
    true, estimated = estimates[kind]
    assert abs(estimated - true) <= 0.05, (kind, true, estimated)


@pytest.mark.slow
@pytest.mark.parametrize("kind", [*ESTIMATE_OVERSTATES, "fashion"])
def test_the_estimate_overstates_accuracy_on_inputs_unlike_the_training_digits(
    estimates: dict[str, tuple[float, float]], kind: str
) -> None:
    """What docs/monitoring.md says of these kinds, held to: no label-free estimate is trusted there."""
    true, estimated = estimates[kind]
    assert estimated > true + 0.05, (kind, true, estimated)


def test_measured_and_estimated_accuracy_with_their_intervals() -> None:
    from mnistops.evaluate import performance

    m = performance.measured(np.array([1, 2, 3, 4]), np.array([1, 2, 3, 0]))
    assert m.accuracy == 0.75 and m.n == 4 and 0.3 < m.low < 0.75 < m.high < 1.0  # Wilson: 0.301, 0.954
    assert m.low == pytest.approx(0.3006, abs=1e-3) and m.high == pytest.approx(0.9544, abs=1e-3)
    x, y = performance.calibration(np.array([0.2, 0.4, 0.6, 0.9, 0.95, 1.0]), np.array([0, 0, 1, 1, 1, 1]))
    e = performance.estimate(np.array([0.95] * 100), x, y)
    assert e.accuracy == pytest.approx(1.0) and e.low == pytest.approx(1.0) and e.n == 100
    e = performance.estimate(np.array([0.5] * 4), x, y)  # each right by even chance: 0.5 +- 1.96 * 0.25
    assert (
        e.accuracy == pytest.approx(0.5)
        and e.low == pytest.approx(0.01, abs=1e-3)
        and e.high == pytest.approx(0.99, abs=1e-3)
    )
    # A reference made before calibrations existed loads with none: no estimate, not a failure.
    from mnistops.monitor.watch import accuracy_of

    ref_without = reference.Reference(*[np.empty(0)] * 8)
    assert accuracy_of(ref_without, np.array([1, 2]), np.array([0.9, 0.8]), np.array([1, -1])) == {
        "estimated": None,
        "labeled": {"accuracy": 1.0, "low": 0.2065, "high": 1.0, "n": 1},
    }
