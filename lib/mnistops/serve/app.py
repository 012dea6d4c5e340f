"""The serving app: built by :func:`create_app`, its model loaded in ``lifespan`` (importing this
module loads no model), routes thin.

=====================  ==========================================================================
``GET /``              a page to draw a digit on (plain HTML and JavaScript, no network)
``POST /predict``      ``{"images": [...]}``: 28x28 integers 0..255 or 784 floats in [0, 1] each
``POST /predict/image`` a PNG or JPEG (the body, or a multipart upload), made MNIST-like
``POST /feedback``     ``{"prediction_id": ..., "label": 0-9}`` (or a list): the true label of an answer
``GET /health``        alive; ``GET /ready``: 200 once a model is loaded, else 503
``GET /model``         name, version, run id, data fingerprint, training metrics
``GET /metrics``       Prometheus
``POST /admin/reload`` look for a new ``@champion`` now (bearer token from ``serve.admin_token``)
=====================  ==========================================================================

Every refusal is a 4xx with a JSON ``detail`` that says what was wrong. The model URI is followed:
every ``serve.poll_seconds`` the alias is looked up, and a new version is loaded on a thread and
swapped in at once; requests already running finish on the version they started with.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from mnistops.config import ServeConfig
from mnistops.serve.inputs import BadInput
from mnistops.serve.state import ServeState
from mnistops.serve.timing import Measured

log = logging.getLogger(__name__)


def create_app(cfg: ServeConfig, tracking_uri: str, registered_model: str = "mnist-classifier") -> Any:
    """The FastAPI app serving ``cfg``'s model from the store at ``tracking_uri``: its state
    (:class:`~mnistops.serve.state.ServeState`), its lifespan, and the routers."""
    from mnistops.lifecycle import versions
    from mnistops.serve.routes import admin, feedback, info, predict

    state = ServeState(cfg, tracking_uri, versions.model_uri(cfg, registered_model))
    app = FastAPI(title="mnistops", version=_version(), lifespan=_lifespan(state), docs_url="/docs", redoc_url=None)
    app.state.serve = state
    for module in (predict, feedback, info, admin):
        app.include_router(module.router)

    app.add_middleware(Measured, count=lambda scope, status, started: _count(state, scope, status, started))

    @app.exception_handler(BadInput)
    async def bad_input(request: Request, exc: BadInput) -> Any:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    return app


def _lifespan(state: ServeState) -> Any:
    """Load the model, start the prediction log, the thread pool, the batcher and the follower;
    stop them in turn (every queued prediction is written before the process ends)."""
    from mnistops.serve.batching import MicroBatcher

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        cfg = state.cfg
        try:
            await state.reload()
        except Exception as exc:
            log.warning("no model yet (%s): /ready answers 503 until one loads", exc)
        state.predlog = _prediction_log(state) if cfg.prediction_log else None
        if state.predlog is not None:  # the live accuracy from the labels already in the log
            state.metrics.live_from(state.predlog.path)
        # Decoding, preprocessing and model calls run here, never on the event loop: /health and
        # the other requests are answered while a large upload is decoded.
        state.pool = ThreadPoolExecutor(cfg.threads, thread_name_prefix="mnistops-serve")
        wait = cfg.batch_wait_ms / 1000
        state.batcher = MicroBatcher(
            lambda: state.holder.current, _predict, cfg.max_batch, wait, executor=state.pool, inline=_inline
        )
        state.batcher.start()
        import asyncio

        follower = asyncio.get_running_loop().create_task(state.follow())
        try:
            yield
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
            await state.batcher.stop()
            state.pool.shutdown(wait=True)
            if state.predlog is not None:
                state.predlog.close()

    return lifespan


def _prediction_log(state: ServeState) -> Any:
    from mnistops.tracking import logdb
    from mnistops.tracking.predlog import PredictionLog

    cfg, metrics = state.cfg, state.metrics
    assert cfg.prediction_log is not None
    return PredictionLog(
        cfg.prediction_log if logdb.is_url(cfg.prediction_log) else Path(cfg.prediction_log),
        cfg.log_max_rows,
        cfg.log_max_age_days * 86400,
        queue_max=cfg.log_queue_max,
        on_error=metrics.log_errors.inc,
        on_drop=metrics.log_dropped.inc,
    )


def _count(state: ServeState, scope: dict[str, Any], status: int, started: float) -> None:
    endpoint = getattr(scope.get("route"), "path", "other")
    state.metrics.requests.labels(endpoint, str(status)).inc()
    if status >= 400:
        state.metrics.errors.labels(endpoint, str(status)).inc()
    state.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


# A packed forest answers this many images in well under a millisecond (mnistops.lifecycle.packed):
# on the event loop, which is cheaper than the hop to a worker thread and back.
INLINE_IMAGES = 16


def _inline(model: Any, images: int) -> bool:
    return getattr(model, "packed", None) is not None and images <= INLINE_IMAGES


def _predict(model: Any, images: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict_proba(images))


def _version() -> str:
    import mnistops

    return mnistops.__version__


def from_environment() -> Any:
    """The app a uvicorn worker process builds (``--workers N``): config from ``MNISTOPS_SERVE``.
    The worker ends with the process that started it, however that one ends."""
    from mnistops import processes

    processes.die_with_parent()
    spec = json.loads(os.environ["MNISTOPS_SERVE"])
    return create_app(ServeConfig.model_validate(spec["serve"]), spec["tracking_uri"], spec["registered_model"])
