"""Concurrent requests answered by one model call.

A forest answers eight images in about the time it answers one: most of a call is walking the
trees in Python and starting the work, not the images. So requests that arrive together are
stacked and predicted together, on a worker thread (the event loop keeps taking requests
meanwhile), and each gets its own rows back with the model that answered. One batch runs at a
time; the next gathers while it runs.

The wait adapts to the load, as Triton's and BentoML's adaptive batching do: a request that finds
the server idle (nothing else waiting) is predicted at once, with no wait at all; when requests
are queuing, a batch takes every one that is waiting and then gathers for up to ``wait_s`` more,
up to ``max_images`` images (the queue-delay bound and the maximum batch).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    images: np.ndarray
    future: asyncio.Future[tuple[np.ndarray, Any]]
    timing: list[tuple[str, float]] | None
    queued: float


class MicroBatcher:
    """Gathers ``uint8 (n, 28, 28)`` requests (every one waiting; under load, for up to ``wait_s``
    seconds more) up to ``max_images`` images, then calls ``predict(model, images)`` once for all
    of them, on ``executor`` (default: the event loop's own), or on the event loop itself when
    ``inline(model, images)`` says the call is cheap. ``batches`` and ``waits`` count the model
    calls and the calls that waited for more requests."""

    def __init__(
        self,
        current: Callable[[], Any],
        predict: Callable[[Any, np.ndarray], np.ndarray],
        max_images: int = 256,
        wait_s: float = 0.002,
        executor: Executor | None = None,
        inline: Callable[[Any, int], bool] = lambda model, images: False,
    ) -> None:
        self.current, self.predict, self.executor, self.inline = current, predict, executor, inline
        self.max_images, self.wait_s = max_images, wait_s
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.batches = self.waits = 0

    def start(self) -> None:
        """Start gathering (on the running event loop)."""
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop gathering; requests still waiting get an error."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        while not self.queue.empty():
            pending = self.queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("the server is shutting down"))

    async def submit(self, images: np.ndarray, timing: list[tuple[str, float]] | None = None) -> tuple[np.ndarray, Any]:
        """Probabilities ``(n, 10)`` for ``images`` and the model that gave them. ``timing``, if
        given, gets how long the request waited for its batch (``wait``) and the batch's model
        call took (``model``), in seconds."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[np.ndarray, Any]] = loop.create_future()
        await self.queue.put(_Pending(images, future, timing, time.perf_counter()))
        return await future

    async def _gather(self) -> list[_Pending]:
        """The next batch: the first request, every one waiting behind it, and (only when some
        were waiting: the server is under load) those arriving within ``wait_s``."""
        loop = asyncio.get_running_loop()
        batch = [await self.queue.get()]
        size = len(batch[0].images)
        while size < self.max_images and not self.queue.empty():
            batch.append(self.queue.get_nowait())
            size += len(batch[-1].images)
        if len(batch) == 1 or self.wait_s <= 0:
            return batch  # idle: answer now
        self.waits += 1
        deadline = loop.time() + self.wait_s
        while size < self.max_images and (timeout := deadline - loop.time()) > 0:
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), timeout))
            except TimeoutError:
                break
            size += len(batch[-1].images)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            self.batches += 1
            model = self.current()  # one model for the whole batch, even if a new one arrives
            try:
                stacked = np.concatenate([p.images for p in batch])
                if self.inline(model, len(stacked)):  # cheaper than the hop to a thread and back
                    proba, started, took = self._timed(model, stacked)
                else:
                    proba, started, took = await loop.run_in_executor(self.executor, self._timed, model, stacked)
            except Exception as exc:
                log.exception("prediction failed")
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            start = 0
            for p in batch:
                rows = proba[start : start + len(p.images)]
                start += len(p.images)
                if p.timing is not None:
                    p.timing += [("wait", max(0.0, started - p.queued)), ("model", took)]
                if not p.future.done():
                    p.future.set_result((rows, model))

    def _timed(self, model: Any, images: np.ndarray) -> tuple[np.ndarray, float, float]:
        """``predict(model, images)``, when it started and how long it took."""
        started = time.perf_counter()
        proba = self.predict(model, images)
        return proba, started, time.perf_counter() - started
