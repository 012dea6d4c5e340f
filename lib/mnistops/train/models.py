"""Models behind one small interface, chosen by name.

Each model name has a parameter model (:data:`mnistops.catalog.PARAMS`, pydantic,
``extra="forbid"``) and a builder. Every model is a :class:`Model`: ``fit`` on ``float32 (n, 784)`` features,
``predict_proba`` to ``(n, 10)``, ``save`` into a folder that :mod:`mnistops.train.pyfunc_model`
loads with nothing but stock MLflow. The seed from the config is passed as ``random_state``.

Forests are fitted in batches of trees (``warm_start``), which draws the same per-tree seeds
as a single ``fit`` and so builds the same forest, while giving progress and a point between
batches where Ctrl-C or SIGTERM is handled. Each finished batch is packed (joblib, zlib) on a
second thread while the next one grows, and its trees are let go: a forest is held at about
a sixth of its size, and the packed batches are the saved model's files as they are.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mnistops.catalog import FORESTS, PARAMS
from mnistops.data.dataset import to_features
from mnistops.errors import ConfigError, MissingExtraError
from mnistops.progress import NullReporter, Reporter

log = logging.getLogger(__name__)

MODEL_FORMAT = "mnistops-model/1"


EpochCallback = Callable[[int, dict[str, float]], None]


class Model(Protocol):
    """What every model offers the pipeline (and, later, the server and monitor)."""

    name: str
    kind: str
    held_out_proba: np.ndarray | None

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        progress: Reporter | None = None,
        on_epoch: EpochCallback | None = None,
        held_out: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Fit on features ``float32 (n, 784)`` and labels ``uint8 (n,)``.

        ``held_out`` (images or features, and labels) are rows the model never learns from.
        A model that can score them as it grows (a forest, batch by batch) reports their
        accuracy through ``on_epoch`` and leaves their final probabilities in
        ``held_out_proba``, exactly what :meth:`predict_proba` gives on their features;
        others leave ``held_out_proba`` None.
        """

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities ``float (n, 10)`` for features ``float32 (n, 784)``."""
        ...

    def save(self, directory: Path) -> None:
        """Write the fitted model into ``directory`` for :mod:`mnistops.train.pyfunc_model`."""


class SklearnModel:
    """A scikit-learn estimator, optionally after ``StandardScaler(with_mean=False)``."""

    kind = "sklearn"

    def __init__(self, name: str, params: dict[str, Any], preprocess: str, seed: int) -> None:
        self.name = name
        self.params = params
        self.preprocess = preprocess
        self.seed = seed
        self.scaler: Any = None
        self.estimator: Any = _make_estimator(name, params, seed)
        self.packed_trees: list[bytes] = []  # a forest's trees, a joblib file's bytes per batch
        self.held_out_proba: np.ndarray | None = None

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        progress: Reporter | None = None,
        on_epoch: EpochCallback | None = None,
        held_out: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Fit; forests grow in batches of trees so progress shows and signals are handled."""
        progress = progress or NullReporter()
        self.held_out_proba = None
        if self.preprocess == "standard":
            from sklearn.preprocessing import StandardScaler

            self.scaler = StandardScaler(with_mean=False)
            x = self.scaler.fit_transform(x)
        if self.name in FORESTS:
            total = int(self.params["n_estimators"])
            step = max(1, -(-total // 10))
            task = progress.task(f"fit {self.name}", total=total)
            self.estimator.set_params(warm_start=True)
            votes = None if held_out is None else _Votes(held_out[0], self.scaler)
            labels = np.zeros(0) if held_out is None else held_out[1]
            done = 0
            with ThreadPoolExecutor(1, thread_name_prefix="mnistops-pack") as packer:
                packed: list[Future[tuple[bytes, dict[str, float]]]] = []
                reported = 0
                while done < total:
                    n = min(done + step, total)
                    self.estimator.set_params(n_estimators=n)
                    self.estimator.fit(x, y)
                    grown = self.estimator.estimators_[done:n]
                    # A warm start only counts the trees it already has: placeholders will do.
                    self.estimator.estimators_[done:n] = [None] * (n - done)
                    # One thread, so batches are scored (and their votes added) in tree order.
                    packed.append(packer.submit(_score_and_pack, grown, votes, labels, self.estimator.classes_))
                    del grown
                    task.update(n - done)
                    done = n
                    reported = _report(packed, reported, on_epoch, wait=False)
                _report(packed, reported, on_epoch, wait=True)
                self.packed_trees = [f.result()[0] for f in packed]
            task.close()
            self.held_out_proba = None if votes is None else votes.proba()
            self.estimator.set_params(warm_start=False, n_jobs=1)
        else:
            task = progress.task(f"fit {self.name}", total=1)
            self.estimator.fit(x, y)
            task.update(1)
            task.close()

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities ``float64 (n, 10)``.

        A fitted forest is packed: its batches are unpacked one at a time (the next while the
        current one predicts) and their votes added as :class:`_Votes` does, with the rows
        split over the cores.
        """
        import os

        from sklearn.utils.validation import check_array

        if not self.packed_trees:  # not a forest: threaded already (HistGradientBoosting) or one BLAS call
            return np.asarray(self.pipeline().predict_proba(x))
        features = check_array(x, dtype=np.float32)
        n_blocks = max(1, min(os.cpu_count() or 1, len(features) // _Votes.BLOCK))
        with (
            ThreadPoolExecutor(n_blocks, thread_name_prefix="mnistops-predict") as pool,
            ThreadPoolExecutor(1, thread_name_prefix="mnistops-unpack") as unpacker,
        ):
            votes = _Votes(features, self.scaler, pool)
            upcoming = unpacker.submit(_unpack, self.packed_trees[0])
            for i in range(len(self.packed_trees)):
                trees = upcoming.result()
                if i + 1 < len(self.packed_trees):
                    upcoming = unpacker.submit(_unpack, self.packed_trees[i + 1])
                votes.add(trees)
                del trees
        return votes.proba()

    def pipeline(self) -> Any:
        """The fitted estimator, with its scaler in a ``Pipeline`` when there is one."""
        if self.scaler is None:
            return self.estimator
        from sklearn.pipeline import Pipeline

        return Pipeline([("scaler", self.scaler), ("clf", self.estimator)])

    def save(self, directory: Path) -> None:
        """``model.joblib`` (zlib level 3: a fifth of the pickle's size), a packed forest's
        ``trees-NNN.joblib`` and ``meta.json``."""
        import joblib

        directory.mkdir(parents=True, exist_ok=True)
        joblib.dump(self.pipeline(), directory / "model.joblib", compress=3)
        meta: dict[str, Any] = {"format": MODEL_FORMAT, "kind": self.kind, "name": self.name, "file": "model.joblib"}
        if self.packed_trees:
            # The forest in model.joblib has no trees; they are these files, in order.
            meta["trees"] = [f"trees-{i:03d}.joblib" for i in range(len(self.packed_trees))]
            for name, blob in zip(meta["trees"], self.packed_trees, strict=True):
                (directory / name).write_bytes(blob)
        (directory / "meta.json").write_text(json.dumps(meta))


class _Votes:
    """The probabilities of a forest's trees for some rows, added in tree order.

    This is what ``RandomForestClassifier.predict_proba`` does with ``n_jobs=1`` (each tree's
    probabilities added, then divided by the count), so the result is bit-identical to it.
    Rows are turned into features a block at a time (no whole feature matrix is made); with a
    ``pool`` the blocks are added on its threads, which changes nothing in any row's sums.
    """

    BLOCK = 2048

    def __init__(self, rows: np.ndarray, scaler: Any, pool: ThreadPoolExecutor | None = None) -> None:
        self.rows = rows  # images or features (see dataset.to_features)
        self.scaler = scaler
        self.pool = pool
        self.sum: np.ndarray | None = None
        self.n_trees = 0

    def _add_block(self, trees: list[Any], start: int) -> None:
        assert self.sum is not None
        x = to_features(self.rows[start : start + self.BLOCK])
        x = np.ascontiguousarray(x if self.scaler is None else self.scaler.transform(x), dtype=np.float32)
        acc = self.sum[start : start + self.BLOCK]
        for tree in trees:
            acc += tree.predict_proba(x, check_input=False)

    def add(self, trees: list[Any]) -> None:
        """Add a batch of fitted trees' votes."""
        if self.sum is None:
            self.sum = np.zeros((len(self.rows), int(trees[0].n_classes_)), dtype=np.float64)
        starts = range(0, len(self.rows), self.BLOCK)
        if self.pool is None:
            for start in starts:
                self._add_block(trees, start)
        else:
            list(self.pool.map(lambda start: self._add_block(trees, start), starts))
        self.n_trees += len(trees)

    def proba(self) -> np.ndarray:
        """The mean of the votes added so far."""
        assert self.sum is not None
        return self.sum / self.n_trees


def _score_and_pack(
    trees: list[Any], held_out: _Votes | None, labels: np.ndarray, classes: np.ndarray
) -> tuple[bytes, dict[str, float]]:
    """Add a batch of fitted trees' votes on the held-out rows (and report the accuracy of the
    forest so far), then pack the batch: the bytes of a joblib file, zlib level 3."""
    import joblib

    values: dict[str, float] = {}
    if held_out is not None:
        held_out.add(trees)
        assert held_out.sum is not None
        accuracy = float((classes[held_out.sum.argmax(axis=1)] == labels).mean())
        values = {"trees": float(held_out.n_trees), "held_out_accuracy": accuracy}
    buf = io.BytesIO()
    joblib.dump(trees, buf, compress=3)
    return buf.getvalue(), values


def _report(
    packed: list[Future[tuple[bytes, dict[str, float]]]], reported: int, on_epoch: EpochCallback | None, wait: bool
) -> int:
    """Pass finished batches' held-out scores to ``on_epoch``, in order; return how many are."""
    while reported < len(packed) and (wait or packed[reported].done()):
        values = packed[reported].result()[1]
        if on_epoch is not None and values:
            on_epoch(int(values["trees"]), {"held_out_accuracy": values["held_out_accuracy"]})
        reported += 1
    return reported


def _unpack(blob: bytes) -> list[Any]:
    import joblib

    return list(joblib.load(io.BytesIO(blob)))


def _make_estimator(name: str, params: dict[str, Any], seed: int) -> Any:
    if name == "random_forest":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(random_state=seed, **params)
    if name == "extra_trees":
        from sklearn.ensemble import ExtraTreesClassifier

        return ExtraTreesClassifier(random_state=seed, **params)
    if name == "hist_gradient_boosting":
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(random_state=seed, early_stopping=False, **params)
    if name == "logistic_regression":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(random_state=seed, **params)
    raise ConfigError(f"unknown model {name!r}: use one of {', '.join(PARAMS)}")


def build_model(name: str, params: dict[str, Any], preprocess: str = "none", seed: int = 42) -> Model:
    """Make an unfitted model by name.

    Raises:
        ConfigError: unknown name.
        MissingExtraError: ``cnn`` without torch installed.
    """
    if name not in PARAMS:
        raise ConfigError(f"unknown model {name!r}: use one of {', '.join(PARAMS)}")
    full = PARAMS[name].model_validate(params).model_dump()
    if name == "cnn":
        try:
            import torch  # noqa: F401
        except ImportError:
            raise MissingExtraError(
                "model cnn needs PyTorch, which is not installed: pip install -e '.[cnn]' (see README)"
            ) from None
        from mnistops.train.cnn import DeviceError, TorchCNN

        try:
            return TorchCNN(full, preprocess=preprocess, seed=seed)
        except DeviceError as exc:
            raise ConfigError(str(exc)) from None
    return SklearnModel(name, full, preprocess, seed)
