"""The serving app: built by :func:`create_app`, its model loaded in ``lifespan`` (importing this
module loads no model), routes thin.

=====================  ==========================================================================
``GET /``              a page to draw a digit on (plain HTML and JavaScript, no network)
``POST /predict``      ``{"images": [...]}``: 28x28 integers 0..255 or 784 floats in [0, 1] each
``POST /predict/image`` a PNG or JPEG (the body, or a multipart upload), made MNIST-like
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

import asyncio
import contextlib
import hmac
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
from fastapi.responses import HTMLResponse, JSONResponse, Response

from mnistops.config import ServeConfig
from mnistops.serve.inputs import BadInput, image_from_upload, images_from_json

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"


def create_app(cfg: ServeConfig, tracking_uri: str, registered_model: str = "mnist-classifier") -> Any:
    """The FastAPI app serving ``cfg``'s model from the store at ``tracking_uri``."""
    from mnistops.serve import model as models
    from mnistops.serve.batching import MicroBatcher
    from mnistops.serve.metrics import Metrics
    from mnistops.serve.predlog import PredictionLog

    uri = models.model_uri(cfg, registered_model)
    metrics = Metrics()
    holder = models.ModelHolder()
    reload_lock = asyncio.Lock()
    state: dict[str, Any] = {}

    async def reload(force: bool = False) -> bool:
        """Load the version ``uri`` names now if it is not the one served; True if one was."""
        async with reload_lock:
            loop = asyncio.get_running_loop()
            _, version, _ = await loop.run_in_executor(None, models.resolve, uri, tracking_uri)
            current = holder.current
            if current is not None and not force and (version == current.version or not version):
                return False
            loaded = await loop.run_in_executor(None, models.load, uri, tracking_uri)
            old = holder.swap(loaded)
            metrics.model_loaded(loaded, old)
            if old is not None:
                log.warning("now serving %s version %s (was %s)", loaded.name, loaded.version, old.version)
            return True

    async def drift_verdict() -> None:
        """The newest monitoring verdict on the version served (``mnistops monitor``), as a gauge."""
        from mnistops.monitor.run import VERDICT_CODE, last_verdict

        current = holder.current
        if current is None or not current.version:
            return
        verdict = await asyncio.get_running_loop().run_in_executor(
            None, last_verdict, tracking_uri, current.name, current.version
        )
        metrics.drift.set(VERDICT_CODE.get(verdict or "", -1))

    async def follow() -> None:
        while True:
            try:
                await drift_verdict()
            except Exception as exc:
                log.warning("could not read the monitoring verdict: %s", exc)
            await asyncio.sleep(cfg.poll_seconds)
            try:
                await reload()
            except Exception as exc:  # the store may be away for a while: keep serving what we have
                log.warning("could not check %s: %s", uri, exc)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        try:
            await reload()
        except Exception as exc:
            log.warning("no model yet (%s): /ready answers 503 until one loads", exc)
        predlog = None
        if cfg.prediction_log:
            max_age = cfg.log_max_age_days * 86400
            predlog = PredictionLog(
                Path(cfg.prediction_log),
                cfg.log_max_rows,
                max_age,
                queue_max=cfg.log_queue_max,
                on_error=metrics.log_errors.inc,
                on_drop=metrics.log_dropped.inc,
            )
        state["predlog"] = predlog
        # Decoding, preprocessing and model calls run here, never on the event loop: /health and
        # the other requests are answered while a large upload is decoded.
        pool = ThreadPoolExecutor(cfg.threads, thread_name_prefix="mnistops-serve")
        state["pool"] = pool
        batcher = MicroBatcher(lambda: holder.current, _predict, cfg.max_batch, cfg.batch_wait_ms / 1000, executor=pool)
        batcher.start()
        state["batcher"] = batcher
        follower = asyncio.get_running_loop().create_task(follow())
        try:
            yield
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
            await batcher.stop()
            pool.shutdown(wait=True)
            if predlog is not None:
                predlog.close()  # every queued prediction is written before the process ends

    app = FastAPI(title="mnistops", version=_version(), lifespan=lifespan, docs_url="/docs", redoc_url=None)

    @app.middleware("http")
    async def measure(request: Request, call_next: Any) -> Any:
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:  # counted as a 500, then raised for the server to answer
            _count(request, 500, started)
            raise
        _count(request, response.status_code, started)
        return response

    def _count(request: Request, status: int, started: float) -> None:
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "other")
        metrics.requests.labels(endpoint, str(status)).inc()
        if status >= 400:
            metrics.errors.labels(endpoint, str(status)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

    @app.exception_handler(BadInput)
    async def bad_input(request: Request, exc: BadInput) -> Any:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    async def answer(images: np.ndarray, endpoint: str, extra: dict[str, Any] | None = None) -> Any:
        if holder.current is None:
            return JSONResponse({"detail": _NO_MODEL}, status_code=503)
        proba, served = await state["batcher"].submit(images)
        labels = proba.argmax(axis=1)
        for label, p in zip(labels, proba, strict=True):
            metrics.predictions.labels(str(int(label))).inc()
            metrics.confidence.observe(float(p[label]))
        if state.get("predlog") is not None:
            state["predlog"].add(served.name, served.version, images, proba, endpoint)
        return {
            "model": {"name": served.name, "version": served.version, "run_id": served.run_id},
            "predictions": [
                {"label": int(label), "confidence": round(float(p[label]), 6), "probabilities": _rounded(p)}
                for label, p in zip(labels, proba, strict=True)
            ],
            **(extra or {}),
        }

    async def off_loop(work: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(state["pool"], work, *args)

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        body = await _read_body(request, cfg.max_body_bytes)
        return await answer(await off_loop(images_from_json, body, cfg.max_batch), "/predict")

    @app.post("/predict/image")
    async def predict_image(request: Request) -> Any:
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/form-data"):
            data = await _read_upload(request, cfg.max_body_bytes)
        else:
            data = await _read_body(request, cfg.max_body_bytes)
        image = await off_loop(image_from_upload, data, cfg.max_image_pixels)
        return await answer(image[None], "/predict/image", {"input": image.tolist()})

    @app.get("/", response_class=HTMLResponse)
    async def page() -> Any:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> Any:
        trouble = state["predlog"].health() if state.get("predlog") is not None else None
        if trouble is not None:  # alive and answering, but what it answers is not all recorded
            return {"status": "degraded", "prediction_log": trouble}
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> Any:
        current = holder.current
        if current is None:
            return JSONResponse({"detail": _NO_MODEL}, status_code=503)
        return {"status": "ready", "model": current.name, "version": current.version}

    @app.get("/model")
    async def model_info() -> Any:
        current = holder.current
        if current is None:
            return JSONResponse({"detail": _NO_MODEL}, status_code=503)
        return {**current.describe(), "following": uri, "poll_seconds": cfg.poll_seconds}

    @app.get("/metrics")
    async def prometheus() -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload")
    async def admin_reload(request: Request) -> Any:
        if not cfg.admin_token:
            return JSONResponse({"detail": "admin endpoints are disabled: set serve.admin_token"}, status_code=403)
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {cfg.admin_token}".encode()):
            return JSONResponse({"detail": "a valid bearer token is required"}, status_code=403)
        try:
            changed = await reload()
        except Exception as exc:
            return JSONResponse({"detail": f"could not load {uri}: {exc}"}, status_code=503)
        current = holder.current
        return {"changed": changed, "version": current.version if current else None}

    app.state.metrics = metrics
    app.state.holder = holder
    app.state.reload = reload
    return app


_NO_MODEL = "no model is loaded yet: promote one to @champion (mnistops promote) or pass --model"


def _predict(model: Any, images: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict_proba(images))


def _rounded(p: np.ndarray) -> list[float]:
    return [round(float(v), 6) for v in p]


def _version() -> str:
    import mnistops

    return mnistops.__version__


# How much of a refused body is read and dropped before the 413 is sent. A client that sends the
# whole body before it reads the answer (Python's urllib, requests) sees "connection reset" instead
# of the 413 if the server closes with the body unread; reading it costs one chunk of memory at a
# time. A body larger than this is cut off unread (the client may then see the reset).
DRAIN_BYTES = 16_000_000


async def _drain(request: Any, budget: int = DRAIN_BYTES) -> None:
    """Read and drop what is left of the body, up to ``budget`` bytes."""
    async for chunk in request.stream():
        budget -= len(chunk)
        if budget < 0:
            return


def _declared_size(request: Any) -> int | None:
    declared = request.headers.get("content-length")
    return int(declared) if declared is not None and declared.isdigit() else None


async def _refuse_declared_size(request: Any, limit: int) -> None:
    """413 from the ``Content-Length`` header alone, before any of the body is kept."""
    declared = _declared_size(request)
    if declared is not None and declared > limit:
        if declared <= DRAIN_BYTES:
            await _drain(request)
        raise BadInput(413, f"the body is {declared:,} bytes; at most {limit:,} (serve.max_body_bytes)")


async def _read_body(request: Any, limit: int) -> bytes:
    """The body, refused with 413 once it passes ``limit`` bytes (before it is all kept)."""
    await _refuse_declared_size(request, limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            await _drain(request)
            raise BadInput(413, f"the body passed {limit:,} bytes (serve.max_body_bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_upload(request: Any, limit: int) -> bytes:
    """The first file of a multipart form, the whole body within ``limit`` bytes: it is counted as
    it streams (a chunked upload has no ``Content-Length`` to refuse it by), then parsed."""
    body = await _read_body(request, limit)

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=10)
    except Exception as exc:
        raise BadInput(400, f"the multipart form could not be read: {exc}") from None
    for value in form.values():
        if hasattr(value, "read"):
            data: bytes = await value.read()
            return data
    raise BadInput(422, "the form holds no file: upload the image as a file field (e.g. curl -F image=@digit.png)")


def from_environment() -> Any:
    """The app a uvicorn worker process builds (``--workers N``): config from ``MNISTOPS_SERVE``.
    The worker ends with the process that started it, however that one ends."""
    from mnistops import processes

    processes.die_with_parent()
    spec = json.loads(os.environ["MNISTOPS_SERVE"])
    return create_app(ServeConfig.model_validate(spec["serve"]), spec["tracking_uri"], spec["registered_model"])
