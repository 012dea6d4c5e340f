"""The reference a served model is watched against, computed when it is trained and logged with its
run (``monitoring/reference.npz``).

* the :mod:`~mnistops.evaluate.features` of a seeded sample of the training images;
* a PCA fitted on that sample (its mean and components) and the sample's first components;
* the reconstruction error of the sample under that PCA, whose 99th percentile marks an input as
  out of distribution (far from anything the model was trained on);
* the training labels' distribution;
* on the held-out split: the model's predicted classes and its confidence (probability of the
  predicted class), which current predictions are compared with;
* the calibration of that confidence on the held-out split (how often the model is right at each
  confidence), from which :mod:`mnistops.evaluate.performance` estimates accuracy without labels.
  A reference made before it existed has none (empty arrays): no estimate then.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mnistops import record
from mnistops.errors import MnistopsError
from mnistops.evaluate.features import FEATURES, image_features

SAMPLE = 5000  # training images in the reference (features and PCA)
COMPONENTS = 10
OOD_QUANTILE = 0.99  # an input whose PCA reconstruction error passes this quantile of the training sample's


class NoReferenceError(MnistopsError, LookupError):
    """A model's run has no reference profile (trained before monitoring existed)."""


@dataclass(frozen=True)
class Reference:
    """See the module's docstring. Arrays only, so that it saves to and loads from one ``.npz``."""

    features: np.ndarray  # float (SAMPLE, len(FEATURES))
    pca_mean: np.ndarray  # float (784,)
    pca_components: np.ndarray  # float (COMPONENTS, 784)
    projections: np.ndarray  # float (SAMPLE, COMPONENTS)
    ood_threshold: np.ndarray  # float () : reconstruction error
    label_share: np.ndarray  # float (10,)
    predicted: np.ndarray  # int (n_held_out,)
    confidence: np.ndarray  # float (n_held_out,)
    calibration_x: np.ndarray = field(default_factory=lambda: np.empty(0))  # float: confidence breakpoints
    calibration_y: np.ndarray = field(default_factory=lambda: np.empty(0))  # float: the chance of being right

    def project(self, images: np.ndarray) -> np.ndarray:
        """``(n, COMPONENTS)``: images in the reference's PCA coordinates."""
        return (_flat(images) - self.pca_mean) @ self.pca_components.T

    def reconstruction_error(self, images: np.ndarray) -> np.ndarray:
        """``(n,)``: how far each image lies from the space the training images span (RMS, 0..1 pixels)."""
        return _reconstruction_error(_flat(images), self.pca_mean, self.pca_components)

    def to_bytes(self) -> bytes:
        out = io.BytesIO()
        np.savez_compressed(out, **asdict(self))
        return out.getvalue()

    @classmethod
    def load(cls, path: Path) -> Reference:
        with np.load(path) as z:
            return cls(**{k: z[k] for k in cls.__dataclass_fields__ if k in z.files})


def _flat(images: np.ndarray) -> np.ndarray:
    return np.asarray(images, dtype=np.float64).reshape(len(images), 784) / 255.0


def input_profile(images: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """The training side of the reference: features, PCA and OOD threshold of a seeded sample of
    ``images`` (the training split's), and the labels' distribution."""
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(len(images), min(SAMPLE, len(images)), replace=False))
    sample = images[take]
    flat = _flat(sample)
    pca = PCA(COMPONENTS, random_state=seed, svd_solver="randomized")
    projections = pca.fit_transform(flat)
    errors = _reconstruction_error(flat, pca.mean_, pca.components_)
    return {
        "features": image_features(sample),
        "pca_mean": pca.mean_,
        "pca_components": pca.components_,
        "projections": projections,
        "ood_threshold": np.asarray(np.quantile(errors, OOD_QUANTILE)),
        "label_share": np.bincount(labels, minlength=10) / len(labels),
    }


def _reconstruction_error(flat: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    centred = flat - mean
    back = (centred @ components.T) @ components
    return np.sqrt(((centred - back) ** 2).mean(axis=1))


def complete(
    profile: dict[str, np.ndarray], held_out_proba: np.ndarray, held_out_labels: np.ndarray | None = None
) -> Reference:
    """The reference, once the model's held-out probabilities (and labels: the calibration) are known."""
    from mnistops.evaluate.performance import calibration

    proba = np.asarray(held_out_proba)
    predicted, confidence = proba.argmax(axis=1), proba.max(axis=1)
    if held_out_labels is None:
        return Reference(**profile, predicted=predicted, confidence=confidence)
    x, y = calibration(confidence, predicted == np.asarray(held_out_labels))
    return Reference(**profile, predicted=predicted, confidence=confidence, calibration_x=x, calibration_y=y)


def for_run(tracking_uri: str, run_id: str) -> Reference:
    """The reference logged with training run ``run_id``.

    Raises:
        NoReferenceError: the run has none (a model trained before monitoring existed).
    """
    import mlflow

    from mnistops import processes

    with processes.temporary_directory("reference") as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=record.REFERENCE_ARTIFACT, dst_path=tmp, tracking_uri=tracking_uri
            )
        except Exception:
            raise NoReferenceError(
                f"run {run_id} has no reference profile ({record.REFERENCE_ARTIFACT}): it was trained before "
                "monitoring existed; retrain it (mnistops train --force) to monitor it"
            ) from None
        return Reference.load(Path(path))


def describe(ref: Reference) -> dict[str, Any]:
    """A few numbers about a reference, for a report."""
    return {
        "training_sample": len(ref.features),
        "features": list(FEATURES),
        "pca_components": int(ref.pca_components.shape[0]),
        "held_out_predictions": len(ref.predicted),
        "ood_threshold": float(ref.ood_threshold),
    }
