"""The page to draw on, and what the server says of itself: health, readiness, model, metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, JSONResponse, Response

from mnistops.serve.state import NO_MODEL, State

router = APIRouter()

STATIC = Path(__file__).resolve().parents[1] / "static"


@router.get("/", response_class=HTMLResponse)
async def page() -> Any:
    """A page to draw a digit on (plain HTML and JavaScript; it loads nothing from elsewhere)."""
    return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))


@router.get("/health")
async def health(s: State) -> Any:
    """Alive; ``degraded``, with why, while the prediction log is not being written."""
    trouble = s.predlog.health() if s.predlog is not None else None
    if trouble is not None:  # alive and answering, but what it answers is not all recorded
        return {"status": "degraded", "prediction_log": trouble}
    return {"status": "ok"}


@router.get("/ready")
async def ready(s: State) -> Any:
    """200 once a model is loaded, else 503."""
    current = s.holder.current
    if current is None:
        return JSONResponse({"detail": NO_MODEL}, status_code=503)
    return {"status": "ready", "model": current.name, "version": current.version}


@router.get("/model")
async def model_info(s: State) -> Any:
    """The model that answers: name, version, run, data fingerprint, metrics, what it follows."""
    current = s.holder.current
    if current is None:
        return JSONResponse({"detail": NO_MODEL}, status_code=503)
    return {**current.describe(), "following": s.uri, "poll_seconds": s.cfg.poll_seconds}


@router.get("/metrics")
async def prometheus(s: State) -> Any:
    """Prometheus exposition (every worker's, summed)."""
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(s.metrics.render(), media_type=CONTENT_TYPE_LATEST)
