"""Logging a trained mnistops model to MLflow, as a pyfunc model that stock MLflow loads.

The pyfunc code (:mod:`mnistops.train.pyfunc_model`) is stored with the model, so a fresh process
without mnistops loads it. Its input is MLflow's "any array" and the model checks what it gets
(see :func:`model_signature`).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def model_signature() -> Any:
    """Input: images, any number type and either layout (see below). Output: ``label`` and ``prob_0..9``.

    MLflow checks a tensor input's rank and dtype exactly, so no single typed tensor admits both
    ``uint8 (n, 28, 28)`` and ``float64 (n, 784)``, the two forms people pass most. The input is
    declared as MLflow's "any array" (object dtype, shape ``(-1,)``), which its schema check lets
    through as it is, and the model checks shape, type and range itself
    (:func:`mnistops.train.pyfunc_model.to_features`), refusing anything else with a clear message.
    """
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    outputs: list[ColSpec | TensorSpec] = [ColSpec("long", "label")]
    outputs += [ColSpec("double", f"prob_{i}") for i in range(10)]
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(object), (-1,))]), outputs=Schema(outputs))


def prepare_model_logging() -> None:
    """Do ahead what :func:`log_model` spends most of its time on, e.g. on a thread while the
    model predicts: import ``mlflow.pyfunc`` and let MLflow map modules to packages (a scan
    of every installed distribution, which it does once per process to check requirements)."""
    import mlflow.pyfunc  # noqa: F401

    try:
        from mlflow.utils.requirements_utils import _init_packages_to_modules_map
    except ImportError:  # a private helper: if MLflow moves it, log_model just does the scan later
        return
    _init_packages_to_modules_map()


def log_model(model_dir: Path, input_example: Any, pip_requirements: list[str]) -> Any:
    """Log a saved mnistops model (``model_dir``) as an MLflow pyfunc model named ``model``.

    The pyfunc code (:mod:`mnistops.train.pyfunc_model`) is stored with it, so stock MLflow loads it
    in a fresh process without mnistops. Requirements are given, not inferred: inference would
    load the model once more in a subprocess.
    """
    import mlflow
    from mlflow.models import Model

    # What mlflow.pyfunc.log_model does, minus validate_serving_input: that check loads the
    # whole model a second time in this process (over a second and the model's size in RAM
    # for a forest). The tests load every logged model in a fresh process instead.
    class _Pyfunc:
        """``mlflow.pyfunc`` as a flavor module for ``Model.log``, without the re-load check."""

        __name__ = "mlflow.pyfunc"

        @staticmethod
        def save_model(**kwargs: Any) -> None:
            kwargs.pop("validate_serving_input", None)
            mlflow.pyfunc.save_model(**kwargs)

    try:
        return _log_pyfunc(Model, _Pyfunc, model_dir, input_example, pip_requirements)
    except BaseException:
        _remove_failed_upload()
        raise


def _remove_failed_upload() -> None:
    """The files of a model whose logging failed half-way (a full disk): a reader finds the whole
    model or none. Its record in the store stays, marked failed by MLflow."""
    import mlflow

    with contextlib.suppress(Exception):
        model = mlflow.last_logged_model()
        if model is not None and model.artifact_location.startswith("file://"):
            folder = Path(model.artifact_location.removeprefix("file://"))
            shutil.rmtree(folder, ignore_errors=True)
            log.info("removed the files of model %s, whose logging failed", model.model_id)


def _log_pyfunc(model: Any, flavor: Any, model_dir: Path, input_example: Any, pip_requirements: list[str]) -> Any:
    from mnistops.train import pyfunc_model

    return model.log(
        artifact_path=None,
        name="model",
        flavor=flavor,
        flavor_name="pyfunc.ModelFromCode",
        python_model=pyfunc_model.__file__,
        artifacts={"model_dir": str(model_dir)},
        signature=model_signature(),
        input_example=input_example,
        pip_requirements=pip_requirements,
        validate_serving_input=False,
    )
