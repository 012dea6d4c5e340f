"""Where a request's time goes, and the request metrics, from one ASGI middleware.

Every ``/predict`` answer carries a ``Server-Timing`` header (the W3C header browsers show in their
network panel) with the stages of that request, in milliseconds::

    Server-Timing: read;dur=0.012, parse;dur=0.031, wait;dur=0.004, model;dur=0.081,
                   handoff;dur=0.060, log;dur=0.009, encode;dur=0.021, app;dur=0.262

``read`` the body, ``parse`` it into images (checks included), ``wait`` in the batcher for the
model, ``model`` the batch's call, ``handoff`` the rest of the batcher's round trip (threads and
the event loop), ``log`` the rows queued for the prediction log, ``encode`` the JSON answer, and
``app`` everything from the request's arrival at the app to the answer's start (routing and
the framework included). What a client measures beyond ``app`` is HTTP and the network.
``benchmarks/bench_serve.py`` sums them over a load run; docs/benchmarks.md has the figures.

The middleware is plain ASGI rather than ``@app.middleware("http")``, which runs each request
through an extra task and stream and cost more than the model itself.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request

TIMING_KEY = "mnistops.timing"  # where a route keeps its stages in the ASGI scope


class Timing:
    """The stages of one request, kept in its scope for the middleware to send."""

    def __init__(self, request: Request) -> None:
        self.stages: list[tuple[str, float]] = []
        self.last = time.perf_counter()
        request.scope[TIMING_KEY] = self.stages

    def mark(self, stage: str) -> None:
        """``stage`` took the time since the last mark."""
        now = time.perf_counter()
        self.stages.append((stage, now - self.last))
        self.last = now

    def split(self, stage: str, measured: list[tuple[str, float]]) -> None:
        """The time since the last mark: the ``measured`` stages, and ``stage`` for the rest."""
        now = time.perf_counter()
        self.stages.extend(measured)
        self.stages.append((stage, max(0.0, now - self.last - sum(s for _, s in measured))))
        self.last = now


def header(stages: list[tuple[str, float]], total: float) -> bytes:
    """The ``Server-Timing`` value: each stage and ``app``, in milliseconds."""
    parts = [f"{name};dur={seconds * 1000:.3f}" for name, seconds in stages]
    parts.append(f"app;dur={total * 1000:.3f}")
    return ", ".join(parts).encode()


class Measured:
    """ASGI middleware: counts every request (endpoint, status, latency) in the app's metrics and
    sends the ``Server-Timing`` header of the routes that keep a :class:`Timing`."""

    def __init__(self, app: Any, count: Any) -> None:
        self.app, self.count = app, count

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Run the request; count it once its answer starts (or as a 500 if none does)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_timed(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                stages = scope.get(TIMING_KEY)
                if stages is not None:
                    value = header(stages, time.perf_counter() - started)
                    message = {**message, "headers": [*message.get("headers", []), (b"server-timing", value)]}
            await send(message)

        try:
            await self.app(scope, receive, send_timed)
        finally:
            self.count(scope, status, started)
