"""Training data from production: a window of a real prediction log (SQLite, its writer thread)
becomes a feedback set; joined to a base dataset its labeled images are training rows only, the
held-out split stays the base's, and the fingerprint names both parents. The gate's replay
compares the two models on what came back labeled, less what the candidate trained on."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from mnistops.data import extras
from mnistops.data.dataset import Dataset
from mnistops.data.fingerprint import data_fingerprint
from mnistops.data.split import make_split
from mnistops.errors import DataError, MnistopsError
from mnistops.lifecycle import shadow
from mnistops.monitor import production
from mnistops.tracking.predlog import PredictionLog, add_feedback, lookup


def base(n: int = 200) -> Dataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = np.arange(n, dtype=np.uint8) % 10
    is_train = np.arange(n) < n * 0.8
    return Dataset("toy", images, labels, is_train, fingerprint=data_fingerprint(images, labels, is_train))


def served_log(tmp_path: Path, n: int = 50, labeled: int = 30) -> tuple[Path, list[str], np.ndarray]:
    """A prediction log of ``n`` answers (version 3), the first ``labeled`` of them labeled."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    truth = rng.integers(0, 10, n)
    path = tmp_path / "predictions.db"
    log = PredictionLog(path)
    ids = log.add("mnist-classifier", "3", images, np.full((n, 10), 0.1), "/predict")
    assert log.flush()
    log.close()
    add_feedback(path, [(pid, int(t), False) for pid, t in zip(ids[:labeled], truth[:labeled], strict=True)])
    return path, ids, truth


def test_a_window_becomes_a_feedback_set_with_its_labels_ids_and_window(tmp_path: Path) -> None:
    path, ids, truth = served_log(tmp_path)
    meta = production.from_log(path, "1h", tmp_path / "all.npz")
    every = extras.read(tmp_path / "all.npz")
    assert meta["n"] == 50 and meta["labeled"] == 30 and meta["model_versions"] == ["mnist-classifier/3"]
    assert every.prediction_ids.tolist() == ids and every.labels[:30].tolist() == truth[:30].tolist()
    assert (every.labels[30:] == -1).all() and every.fingerprint == meta["fingerprint"]

    production.from_log(path, "1h", tmp_path / "labeled.npz", labeled_only=True, hold_back=0.2)
    labeled = extras.read(tmp_path / "labeled.npz")
    assert labeled.meta["held_back"] == 6 and labeled.prediction_ids.tolist() == ids[:24]
    assert labeled.fingerprint != every.fingerprint
    assert lookup(path, ids[0])["truth"] == truth[0] and lookup(path, "f" * 32) is None


def test_a_window_with_nothing_to_give_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    path, _, _ = served_log(tmp_path, labeled=0)
    with pytest.raises(MnistopsError, match=r"no labeled predictions since .*label some through POST /feedback"):
        production.from_log(path, "1h", tmp_path / "out.npz", labeled_only=True)
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    with pytest.raises(MnistopsError, match="holds no predictions since"):
        production.from_log(path, later, tmp_path / "out.npz")
    with pytest.raises(DataError, match=r"does not end in \.npz"):
        production.from_log(path, "1h", tmp_path / "out.csv")
    with pytest.raises(MnistopsError, match="is not a share"):
        production.from_log(path, "1h", tmp_path / "out.npz", hold_back=1.0)
    with pytest.raises(DataError, match=r"folder .* does not exist"):
        production.from_log(path, "1h", tmp_path / "no" / "out.npz")
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("predictions.db")] == []


def test_extras_are_training_rows_only_and_the_held_out_split_is_the_bases(tmp_path: Path) -> None:
    path, _, truth = served_log(tmp_path)
    production.from_log(path, "1h", tmp_path / "fb.npz")  # 30 of 50 labeled: only those are used
    ds = base()
    joined = extras.join(ds, [str(tmp_path / "fb.npz")], weight=2)
    alone, both = make_split(ds, "stratified", 0.25, 7), make_split(joined, "stratified", 0.25, 7)
    assert joined.n_samples == 200 + 60 and joined.n_extra == 60
    assert np.array_equal(alone.test, both.test) and alone.fingerprint == both.fingerprint
    assert np.array_equal(both.train[: len(alone.train)], alone.train)
    assert both.train[len(alone.train) :].tolist() == list(range(200, 260))
    assert joined.labels[200:].tolist() == np.repeat(truth[:30], 2).tolist()
    official = make_split(joined, "official")
    assert len(official.test) == 40 and len(official.train) == 160 + 60

    parents = json.loads(joined.parents)
    assert parents["base"] == ds.fingerprint == extras.base_fingerprint(joined) and parents["weight"] == 2
    assert (
        parents["extra"][0]["n"] == 30
        and parents["extra"][0]["fingerprint"] == extras.read(tmp_path / "fb.npz").fingerprint
    )
    assert joined.fingerprint not in (ds.fingerprint, extras.join(ds, [str(tmp_path / "fb.npz")]).fingerprint)
    assert len(extras.labeled_ids([str(tmp_path / "fb.npz")])) == 30


def test_a_feedback_set_changed_or_foreign_is_refused(tmp_path: Path) -> None:
    path, _, _ = served_log(tmp_path)
    production.from_log(path, "1h", tmp_path / "fb.npz")
    with np.load(tmp_path / "fb.npz") as z:
        arrays = dict(z)
    arrays["labels"] = np.where(arrays["labels"] == 3, 4, arrays["labels"])  # someone edited labels
    np.savez(tmp_path / "edited.npz", **arrays)
    with pytest.raises(DataError, match="was changed after it was written"):
        extras.join(base(), [str(tmp_path / "edited.npz")])
    np.savez(tmp_path / "keras.npz", x_train=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match="is not a feedback set of mnistops data from-log"):
        extras.read(tmp_path / "keras.npz")
    production.from_log(path, "1h", tmp_path / "unlabeled.npz")
    add_none = extras.read(tmp_path / "unlabeled.npz")
    assert len(add_none.labeled) == 30
    with pytest.raises(DataError, match=r"no feedback set at"):
        extras.join(base(), [str(tmp_path / "missing.npz")])


def test_the_replay_compares_both_models_on_what_came_back_labeled_less_what_the_candidate_saw(tmp_path: Path) -> None:
    path, ids, truth = served_log(tmp_path, n=50, labeled=40)
    inputs = shadow.production_inputs(path, last=45, seen=set(ids[:10]))
    assert int(inputs["seen"]) == 5 and len(inputs["truth"]) == 40  # the newest 45, less 5 seen
    assert inputs["truth"].tolist() == truth[10:40].tolist() + [-1] * 10
    right = np.eye(10)[np.where(inputs["truth"] >= 0, inputs["truth"], 0)]
    wrong = np.roll(right, 1, axis=1)
    half = np.vstack([right[:15], wrong[15:]])
    replayed = shadow.replay({"candidate": right, "champion": half}, inputs["truth"], path, 5)
    assert replayed.n == 40 and replayed.labeled == 30 and replayed.seen == 5
    assert replayed.accuracy == {"candidate": 1.0, "champion": 0.5}
    assert replayed.agreement == pytest.approx(15 / 40) and replayed.confidence_shift == 0.0


def test_the_gate_requires_the_production_metric_only_when_set_and_fails_without_labels(tmp_path: Path) -> None:
    from mnistops.config import GateConfig
    from mnistops.lifecycle.registry import _checks

    scores = {"accuracy": 0.96, "f1_macro": 0.96}
    replayed = shadow.Replay("log", 0, 100, 100, 0.9, {"candidate": 0.80, "champion": 0.85}, {"candidate": 0.7})
    assert [c.rule for c in _checks(GateConfig(), scores, scores, replayed)] == ["floor", "not worse than champion"]
    gate = GateConfig(production_metric="accuracy", production_tolerance=0.04)
    worse = _checks(gate, scores, scores, replayed)[-1]
    assert (worse.metric, worse.candidate, worse.champion, worse.passed) == ("production_accuracy", 0.80, 0.85, False)
    assert worse.threshold == pytest.approx(0.81)
    none = _checks(gate, scores, scores, None)[-1]
    assert not none.passed and "none labeled: label some through POST /feedback" in none.rule
    assert len(_checks(gate, scores, None, None)) == 1  # a first champion: nothing to compare
