"""MLflow tracking: the store behind a URI, runs that always end, and what a run logs.

The URI is ``MLFLOW_TRACKING_URI`` if set, else the config's ``tracking.uri``, else MLflow's
own default (``sqlite:///mlflow.db`` in the working directory). :func:`check_store` fails
fast, with one line, when the store cannot be reached, before any run is created.
:func:`tracked_run` guarantees that a run ends FINISHED, FAILED or KILLED (Ctrl-C, SIGTERM),
never RUNNING, and that its log file is uploaded whatever happened.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mnistops.errors import RunNotFoundError, TrackingError

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow.db"


class Terminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM."""


def resolve_uri(config_uri: str | None) -> str:
    """``MLFLOW_TRACKING_URI``, else the config's URI, else ``sqlite:///mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or config_uri or DEFAULT_URI


def absolute_uri(uri: str) -> str:
    """``uri`` with a relative SQLite path made absolute (against the working directory), for
    another process with another working directory, a notebook kernel say, to find the same store."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        path = uri.removeprefix(prefix)
        if path and path != ":memory:":
            return prefix + str(Path(path).expanduser().resolve())
    return uri


def _quiet_mlflow() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Fail over HTTP in seconds, not after minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    # Bars for every artifact download: noise on a terminal and in a notebook alike.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow  # noqa: F401  (it sets up its own loggers on import; quiet them after)

    for name in ("mlflow", "alembic", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)


def check_store(uri: str) -> None:
    """Make sure the tracking store at ``uri`` answers; raise a one-line TrackingError if not."""
    _quiet_mlflow()
    scheme = urlparse(uri).scheme
    if scheme == "sqlite":
        db = uri.removeprefix("sqlite:///")
        folder = Path(db).expanduser().resolve().parent if db and db != ":memory:" else None
        if folder is not None and not folder.is_dir():
            raise TrackingError(
                f"tracking URI {uri}: folder {folder} does not exist; create it or set MLFLOW_TRACKING_URI"
            )
    elif scheme in ("http", "https"):
        import requests

        try:
            requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
        except requests.RequestException as exc:
            raise TrackingError(
                f"cannot reach the MLflow server at {uri} ({type(exc).__name__}): "
                "start it, or set MLFLOW_TRACKING_URI to a reachable store"
            ) from None
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise TrackingError(f"tracking store {uri} is not usable: {first}") from None


def client(uri: str) -> Any:
    """An ``MlflowClient`` for ``uri``."""
    _quiet_mlflow()
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def get_run(uri: str, run_id: str) -> Any:
    """Fetch a run; a one-line RunNotFoundError when it does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client(uri).get_run(run_id)
    except MlflowException:
        raise RunNotFoundError(f"no run {run_id!r} in {uri}: see `mnistops runs list`") from None


def artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: ``mlruns/`` beside a SQLite store's file.

    MLflow's own default is ``./mlruns`` in the working folder of whichever process creates the
    experiment, so a notebook kernel (working in ``notebooks/``) would scatter artifacts away
    from the store. None for other stores (their server decides).
    """
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///")
    if not path or path == ":memory:":
        return None
    return (Path(path).expanduser().resolve().parent / "mlruns").as_uri()


def ensure_experiment(uri: str, name: str) -> None:
    """Create experiment ``name`` if it does not exist, with its artifacts at :func:`artifact_root`."""
    from mlflow.exceptions import MlflowException

    c = client(uri)
    if c.get_experiment_by_name(name) is not None:
        return
    try:
        c.create_experiment(name, artifact_location=artifact_root(uri))
    except MlflowException:
        if c.get_experiment_by_name(name) is None:  # not a race with another process: a real error
            raise


@contextlib.contextmanager
def tracked_run(uri: str, experiment: str, run_name: str | None, tags: dict[str, str]) -> Iterator[Any]:
    """Start a run and make sure it ends: FINISHED, FAILED (exception) or KILLED (signal).

    The run's log records (logger ``mnistops``) go to ``run.log``, uploaded at the end.
    """
    import mlflow

    _quiet_mlflow()
    mlflow.set_tracking_uri(uri)
    try:
        ensure_experiment(uri, experiment)
        mlflow.set_experiment(experiment)
    except Exception as exc:
        raise TrackingError(f"cannot use experiment {experiment!r} in {uri}: {str(exc).splitlines()[0]}") from None
    logdir = tempfile.mkdtemp(prefix="mnistops-log-")
    logfile = Path(logdir) / "run.log"
    handler = logging.FileHandler(logfile)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    pkg_logger = logging.getLogger("mnistops")
    pkg_logger.addHandler(handler)
    old_level = pkg_logger.level
    if pkg_logger.getEffectiveLevel() > logging.INFO:
        pkg_logger.setLevel(logging.INFO)
    run = mlflow.start_run(run_name=run_name, tags=tags)
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    except (KeyboardInterrupt, Terminated):
        status = "KILLED"
        log.error("run %s interrupted", run.info.run_id)
        raise
    except BaseException as exc:
        log.error("run %s failed: %s", run.info.run_id, exc)
        raise
    finally:
        handler.close()
        pkg_logger.removeHandler(handler)
        pkg_logger.setLevel(old_level)
        with contextlib.suppress(Exception):
            mlflow.log_artifact(str(logfile))
        try:
            mlflow.end_run(status)
        except Exception:  # the store went away: nothing more we can record
            log.exception("could not mark run %s %s", run.info.run_id, status)
        with contextlib.suppress(OSError):
            logfile.unlink()
            os.rmdir(logdir)


def model_signature() -> Any:
    """Input: ``float32 (-1, 784)`` pixels in [0, 1]. Output: ``label`` and ``prob_0..9``."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    outputs: list[ColSpec | TensorSpec] = [ColSpec("long", "label")]
    outputs += [ColSpec("double", f"prob_{i}") for i in range(10)]
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 784))]), outputs=Schema(outputs))


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

    from mnistops.train import pyfunc_model

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

    return Model.log(
        artifact_path=None,
        name="model",
        flavor=_Pyfunc,
        flavor_name="pyfunc.ModelFromCode",
        python_model=pyfunc_model.__file__,
        artifacts={"model_dir": str(model_dir)},
        signature=model_signature(),
        input_example=input_example,
        pip_requirements=pip_requirements,
        validate_serving_input=False,
    )
