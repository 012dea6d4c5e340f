"""What a running server holds, and how a route gets it (a FastAPI dependency).

:class:`ServeState` is built by :func:`mnistops.serve.app.create_app` and lives on
``app.state.serve``: the config, the model holder (which version answers now), the champion
follower, the metrics, and what the lifespan starts (the batcher, the thread pool, the prediction
log). Routes ask for it with ``Depends(serve_state)``; nothing is global.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request

from mnistops import record
from mnistops.config import ServeConfig
from mnistops.serve.holder import ModelHolder
from mnistops.serve.prom import Metrics

log = logging.getLogger(__name__)


@dataclass
class ServeState:
    """One server's state (see the module's docstring)."""

    cfg: ServeConfig
    tracking_uri: str
    uri: str  # the model URI followed: serve.model, else models:/<name>@champion
    metrics: Metrics = field(default_factory=Metrics)
    holder: ModelHolder = field(default_factory=ModelHolder)
    batcher: Any = None
    pool: ThreadPoolExecutor | None = None
    predlog: Any = None
    _reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def off_loop(self, work: Any, *args: Any) -> Any:
        """``work(*args)`` on the server's thread pool: decoding and model calls never hold the loop."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, work, *args)

    async def reload(self, force: bool = False) -> bool:
        """Load the version ``uri`` names now if it is not the one served; True if one was."""
        from mnistops.lifecycle import versions

        async with self._reload_lock:
            loop = asyncio.get_running_loop()
            _, version, _ = await loop.run_in_executor(None, versions.resolve, self.uri, self.tracking_uri)
            current = self.holder.current
            if current is not None and not force and (version == current.version or not version):
                return False
            loaded = await loop.run_in_executor(None, versions.load, self.uri, self.tracking_uri)
            old = self.holder.swap(loaded)
            self.metrics.model_loaded(loaded, old)
            if old is not None:
                log.warning("now serving %s version %s (was %s)", loaded.name, loaded.version, old.version)
            return True

    async def follow(self) -> None:
        """Every ``serve.poll_seconds``: the newest monitoring verdict as a gauge, and a new
        ``@champion`` loaded if it moved. The store may be away for a while: the server keeps
        serving what it has."""
        while True:
            try:
                await self._drift_verdict()
            except Exception as exc:
                log.warning("could not read the monitoring verdict: %s", exc)
            await asyncio.sleep(self.cfg.poll_seconds)
            try:
                await self.reload()
            except Exception as exc:
                log.warning("could not check %s: %s", self.uri, exc)

    async def _drift_verdict(self) -> None:
        from mnistops.tracking.runs import last_verdict

        current = self.holder.current
        if current is None or not current.version:
            return
        verdict = await asyncio.get_running_loop().run_in_executor(
            None, last_verdict, self.tracking_uri, current.name, current.version
        )
        self.metrics.drift.set(record.VERDICT_CODE.get(verdict or "", -1))


async def serve_state(request: Request) -> ServeState:
    """The dependency: the state of the app that answers ``request`` (a coroutine: FastAPI runs a
    plain function dependency on a worker thread, a hop that cost more than the model's call)."""
    state: ServeState = request.app.state.serve
    return state


# What a route declares to get it: ``async def route(s: State) -> ...``.
State = Annotated[ServeState, Depends(serve_state)]

NO_MODEL = "no model is loaded yet: promote one to @champion (mnistops promote) or pass --model"
