"""``POST /predict`` (JSON images, or raw pixels) and ``POST /predict/image`` (a PNG or JPEG)."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from mnistops.serve.bodies import read_body, read_upload
from mnistops.serve.inputs import image_from_upload, images_from_bytes, images_from_json
from mnistops.serve.state import NO_MODEL, ServeState, State
from mnistops.serve.timing import Timing

router = APIRouter()

# A body up to this size is parsed on the event loop (well under a millisecond); a larger one on
# the thread pool, so that /health and small requests are answered while it is decoded.
INLINE_BYTES = 64 * 1024
RAW = "application/octet-stream"


@router.post("/predict")
async def predict(request: Request, s: State) -> Any:
    """Each image's class, confidence and probabilities, and the model that answered. The body is
    JSON (``{"images": [...]}``) or, as ``application/octet-stream``, n x 784 raw pixel bytes."""
    timing = Timing(request)
    body = await read_body(request, s.cfg.max_body_bytes)
    timing.mark("read")
    parse = images_from_bytes if request.headers.get("content-type", "").startswith(RAW) else images_from_json
    if len(body) <= INLINE_BYTES:
        images = parse(body, s.cfg.max_batch)
    else:
        images = await s.off_loop(parse, body, s.cfg.max_batch)
    timing.mark("parse")
    return await answer(s, images, "/predict", timing=timing)


@router.post("/predict/image")
async def predict_image(request: Request, s: State) -> Any:
    """The answer for one uploaded picture, made MNIST-like, and the 28x28 input the model saw."""
    timing = Timing(request)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        data = await read_upload(request, s.cfg.max_body_bytes)
    else:
        data = await read_body(request, s.cfg.max_body_bytes)
    timing.mark("read")
    image = await s.off_loop(image_from_upload, data, s.cfg.max_image_pixels)
    timing.mark("parse")
    return await answer(s, image[None], "/predict/image", {"input": image.tolist()}, timing)


async def answer(
    s: ServeState, images: np.ndarray, endpoint: str, extra: dict[str, Any] | None = None, timing: Timing | None = None
) -> Any:
    """Predict ``images`` (batched with concurrent requests), count and log them, and say so."""
    import orjson

    if s.holder.current is None:
        return JSONResponse({"detail": NO_MODEL}, status_code=503)
    measured: list[tuple[str, float]] = []
    proba, served = await s.batcher.submit(images, measured)
    if timing is not None:
        timing.split("handoff", measured)
    labels = proba.argmax(axis=1)
    confidence = proba[np.arange(len(labels)), labels]
    s.metrics.answered(labels, confidence)
    # Each logged prediction's id, for POST /feedback; null where the server keeps no log.
    ids = s.predlog.add(served.name, served.version, images, proba, endpoint) if s.predlog else [None] * len(labels)
    if timing is not None:
        timing.mark("log")
    rounded = np.round(proba, 6)
    payload = {
        "model": {"name": served.name, "version": served.version, "run_id": served.run_id},
        "predictions": [
            {"label": label, "confidence": p[label], "probabilities": p, "prediction_id": pid}
            for label, p, pid in zip(labels.tolist(), rounded.tolist(), ids, strict=True)
        ],
        **(extra or {}),
    }
    body = orjson.dumps(payload)
    if timing is not None:
        timing.mark("encode")
    return Response(body, media_type="application/json")
