"""Which model is this, and the model itself: a model URI resolved in the registry, and loaded.

``models:/NAME@ALIAS`` and ``models:/NAME/VERSION`` resolve to a registered version and its run
(:func:`resolve`); :func:`load` loads that very version. A :class:`LoadedModel` is immutable, and
its ``predict_proba`` goes straight to the model inside the MLflow pyfunc wrapper when it is an
mnistops model (no DataFrame per call), else through ``pyfunc.predict``. The server answers with
it (:mod:`mnistops.serve.holder` follows ``@champion``), monitoring predicts batches with it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mnistops import record
from mnistops.errors import TrackingError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """One loaded model version, and what ``/model`` says of it."""

    uri: str
    name: str
    version: str
    run_id: str
    data_fingerprint: str
    metrics: dict[str, float]
    loaded_at: float
    pyfunc: Any = field(repr=False)
    # The forest inside, packed for speed (mnistops.lifecycle.packed); None for other models.
    packed: Any = field(default=None, repr=False)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """``float (n, 10)`` class probabilities for ``uint8 (n, 28, 28)`` images."""
        model = _python_model(self.pyfunc)
        if model is not None and hasattr(model, "predict_proba"):
            features = _features(model, images)
            forest = _forest_of(model)
            if forest is not None and self.packed is not None:
                head = forest[0]
                return self.packed.proba(features if head is None else head.transform(features))
            if forest is not None and len(images) < PARALLEL_ROWS:
                return forest_proba(forest, features)
            return np.asarray(model.predict_proba(features))
        frame = self.pyfunc.predict(images)
        return frame[[f"prob_{i}" for i in range(10)]].to_numpy()

    def describe(self) -> dict[str, Any]:
        """What ``GET /model`` answers."""
        return {
            "uri": self.uri,
            "name": self.name,
            "version": self.version,
            "run_id": self.run_id,
            "data_fingerprint": self.data_fingerprint,
            "metrics": self.metrics,
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
        }


def _features(model: Any, images: np.ndarray) -> np.ndarray:
    """The model file's own input check and scaling (``to_features`` beside its class)."""
    import sys

    module = sys.modules.get(type(model).__module__)
    to_features = getattr(module, "to_features", None)
    if to_features is None:
        return images.reshape(len(images), 784).astype(np.float32) / np.float32(255)
    return np.asarray(to_features(images))


PARALLEL_ROWS = 2048  # from this many images on, a forest's own predict_proba splits them over the cores


def _forest_of(model: Any) -> tuple[Any, Any] | None:
    """``(preprocessing or None, forest)`` when the mnistops model inside is a fitted forest."""
    inner: Any = getattr(model, "model", None)
    if hasattr(inner, "steps"):
        head, last = inner[:-1], inner.steps[-1][1]
    else:
        head, last = None, inner
    if last is not None and hasattr(last, "estimators_") and hasattr(last, "n_jobs"):
        return head, last
    return None


def forest_proba(forest: tuple[Any, Any], features: np.ndarray) -> np.ndarray:
    """A forest's class probabilities, exactly as its ``predict_proba`` with ``n_jobs=1`` computes
    them (each tree's probabilities added in order, then divided by the count: bit-identical), but
    without its per-call set-up: input checks and a joblib pool per call cost more than the trees
    for a few images (measured here, 150 trees: one image 19 ms through ``predict_proba``, 2.8 ms
    so; 64 images 24 ms and 9.9 ms). The server's requests are already checked images."""
    head, trees = forest
    x = features if head is None else head.transform(features)
    x = np.ascontiguousarray(x, dtype=np.float32)
    acc = np.zeros((len(x), int(trees.n_classes_)), dtype=np.float64)
    for tree in trees.estimators_:
        acc += tree.predict_proba(x, check_input=False)
    acc /= len(trees.estimators_)
    return acc


def model_uri(cfg: Any, registered_model: str) -> str:
    """The URI to serve: ``serve.model``, else ``models:/<registered model>@champion``."""
    return str(cfg.model or f"models:/{registered_model}@champion")


def resolve(uri: str, tracking_uri: str) -> tuple[str, str, str]:
    """``(registered model name, version, run id)`` that ``uri`` points at now.

    ``models:/NAME@ALIAS`` and ``models:/NAME/VERSION`` are looked up in the registry; any other
    URI (``runs:/...``, ``models:/m-...``) is taken as it is, with no version.
    """
    from mlflow.exceptions import MlflowException

    from mnistops.tracking.store import client

    if not uri.startswith(("models:/", "runs:/", "file:", "/")) and not Path(uri).is_dir():
        raise TrackingError(
            f"{uri!r} is not a model URI: use models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model "
            "or a model folder"
        )
    if not uri.startswith("models:/") or uri.startswith("models:/m-"):
        return "", "", ""
    ref = uri.removeprefix("models:/")
    c = client(tracking_uri)
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            mv = c.get_model_version_by_alias(name, alias)
        else:
            name, version = ref.rsplit("/", 1)
            mv = c.get_model_version(name, version)
    except MlflowException as exc:
        first = (str(exc).splitlines() or [""])[0]
        raise TrackingError(f"model {uri} is not in the registry of {tracking_uri}: {first}") from None
    return str(mv.name), str(mv.version), str(mv.run_id)


def load(uri: str, tracking_uri: str) -> LoadedModel:
    """Load the model ``uri`` names now (its version resolved first, so the two agree)."""
    import mlflow

    name, version, run_id = resolve(uri, tracking_uri)
    fixed = f"models:/{name}/{version}" if version else uri
    mlflow.set_tracking_uri(tracking_uri)
    from mnistops import processes

    # From a server, MLflow downloads the model into a temporary folder it never removes: ours is
    # (the model is in memory once loaded).
    with processes.temporary_directory("model") as tmp:
        pyfunc = load_pyfunc(fixed, tmp)
    metrics: dict[str, float] = {}
    fingerprint = ""
    if run_id:
        from mnistops.tracking.store import client

        run = client(tracking_uri).get_run(run_id)
        metrics = {k: v for k, v in run.data.metrics.items() if k in record.HEADLINE}
        fingerprint = run.data.tags.get(record.DATA_FINGERPRINT, "")
    log.info("loaded %s (%s version %s)", uri, name or "model", version or "-")
    return LoadedModel(uri, name, version, run_id, fingerprint, metrics, time.time(), pyfunc, _packed(pyfunc))


def load_pyfunc(uri: str, dst_path: str) -> Any:
    """``mlflow.pyfunc.load_model(uri)``, downloaded into ``dst_path``; MLflow's check of the model's
    requirements against this environment is left out where they are plainly met here.

    That check maps every installed package to its modules by reading each one's list of files:
    1.4 s per process on the 2-core Intel Xeon, most of the gate's time in ``04_evaluate`` and a
    good part of a server's start. Instead the model's pinned ``requirements.txt`` and its Python
    version are compared with what runs here (:func:`~mnistops.tracking.provenance.unmet_requirements`);
    where anything differs or cannot be read, MLflow checks and warns as it always does.
    """
    import mlflow

    local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst_path)
    return mlflow.pyfunc.load_model(local, suppress_warnings=environment_matches(Path(local)))


def environment_matches(model_dir: Path) -> bool:
    """Whether the logged model in ``model_dir`` was saved by this Python (major.minor, as MLflow
    compares) and every requirement it pins is installed here."""
    import platform

    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    from mnistops.tracking.provenance import unmet_requirements

    try:
        requirements = (model_dir / "requirements.txt").read_text(encoding="utf-8").splitlines()
        saved_by = Model.load(str(model_dir)).flavors.get("python_function", {}).get("python_version")
    except (OSError, MlflowException):
        return False
    minor = platform.python_version_tuple()[:2]
    return str(saved_by).split(".")[:2] == list(minor) and not unmet_requirements(requirements)


def _python_model(pyfunc: Any) -> Any:
    """The Python model inside an MLflow pyfunc, or None for a model of another flavour."""
    from mlflow.exceptions import MlflowException

    try:
        return pyfunc.unwrap_python_model()
    except (AttributeError, MlflowException):
        return None


def _packed(pyfunc: Any) -> Any:
    """The mnistops forest inside ``pyfunc``, packed (:mod:`mnistops.lifecycle.packed`), else None."""
    model = _python_model(pyfunc)
    forest = _forest_of(model) if model is not None else None
    if forest is None:
        return None
    from mnistops.lifecycle import packed

    return packed.pack(forest[1])
