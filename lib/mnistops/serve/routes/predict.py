"""``POST /predict`` (JSON images) and ``POST /predict/image`` (a PNG or JPEG)."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from mnistops.serve.bodies import read_body, read_upload
from mnistops.serve.inputs import image_from_upload, images_from_json
from mnistops.serve.state import NO_MODEL, ServeState, State

router = APIRouter()


@router.post("/predict")
async def predict(request: Request, s: State) -> Any:
    """Each image's class, confidence and probabilities, and the model that answered."""
    body = await read_body(request, s.cfg.max_body_bytes)
    return await answer(s, await s.off_loop(images_from_json, body, s.cfg.max_batch), "/predict")


@router.post("/predict/image")
async def predict_image(request: Request, s: State) -> Any:
    """The answer for one uploaded picture, made MNIST-like, and the 28x28 input the model saw."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        data = await read_upload(request, s.cfg.max_body_bytes)
    else:
        data = await read_body(request, s.cfg.max_body_bytes)
    image = await s.off_loop(image_from_upload, data, s.cfg.max_image_pixels)
    return await answer(s, image[None], "/predict/image", {"input": image.tolist()})


async def answer(s: ServeState, images: np.ndarray, endpoint: str, extra: dict[str, Any] | None = None) -> Any:
    """Predict ``images`` (batched with concurrent requests), count and log them, and say so."""
    if s.holder.current is None:
        return JSONResponse({"detail": NO_MODEL}, status_code=503)
    proba, served = await s.batcher.submit(images)
    labels = proba.argmax(axis=1)
    for label, p in zip(labels, proba, strict=True):
        s.metrics.predictions.labels(str(int(label))).inc()
        s.metrics.confidence.observe(float(p[label]))
    # Each logged prediction's id, for POST /feedback; null where the server keeps no log.
    ids = s.predlog.add(served.name, served.version, images, proba, endpoint) if s.predlog else [None] * len(labels)
    return {
        "model": {"name": served.name, "version": served.version, "run_id": served.run_id},
        "predictions": [
            {
                "label": int(label),
                "confidence": round(float(p[label]), 6),
                "probabilities": _rounded(p),
                "prediction_id": pid,
            }
            for label, p, pid in zip(labels, proba, ids, strict=True)
        ],
        **(extra or {}),
    }


def _rounded(p: np.ndarray) -> list[float]:
    return [round(float(v), 6) for v in p]
