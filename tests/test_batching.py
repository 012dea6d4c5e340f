"""The serving batcher's adaptive wait: an idle server answers a request at once; requests that
queue while the model is busy are answered together, by one model call."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from mnistops.serve.batching import MicroBatcher


def fake_model(calls: list[int], gate: threading.Event | None = None) -> Any:
    def predict(model: Any, images: np.ndarray) -> np.ndarray:
        if gate is not None and not calls:
            gate.wait(10)  # the first call is slow: requests queue behind it
        calls.append(len(images))
        return np.eye(10)[images.reshape(len(images), -1)[:, 0] % 10]

    return predict


def image(value: int) -> np.ndarray:
    return np.full((1, 28, 28), value, dtype=np.uint8)


def test_a_request_to_an_idle_server_is_predicted_without_waiting_for_others() -> None:
    calls: list[int] = []

    async def main() -> MicroBatcher:
        batcher = MicroBatcher(lambda: "m", fake_model(calls), max_images=64, wait_s=0.5)
        batcher.start()
        for value in (3, 4, 5):  # one after the other: each finds the server idle
            proba, model = await batcher.submit(image(value))
            assert proba.argmax(axis=1).tolist() == [value] and model == "m"
        await batcher.stop()
        return batcher

    batcher = asyncio.run(main())
    assert calls == [1, 1, 1] and batcher.batches == 3 and batcher.waits == 0


def test_requests_queued_behind_a_busy_model_are_answered_by_one_call_each_getting_its_rows() -> None:
    calls: list[int] = []
    gate = threading.Event()

    async def main() -> tuple[MicroBatcher, list[Any]]:
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(lambda: "m", fake_model(calls, gate), max_images=64, wait_s=0.01, executor=pool)
            batcher.start()
            first = asyncio.create_task(batcher.submit(image(1)))
            await asyncio.sleep(0.05)  # the first call has started, and blocks
            rest = [asyncio.create_task(batcher.submit(np.concatenate([image(v), image(v + 1)]))) for v in (2, 4, 6)]
            await asyncio.sleep(0.05)
            gate.set()
            answers = await asyncio.gather(first, *rest)
            await batcher.stop()
        return batcher, answers

    batcher, answers = asyncio.run(main())
    assert calls == [1, 6] and batcher.batches == 2 and batcher.waits == 1
    assert [a[0].argmax(axis=1).tolist() for a in answers] == [[1], [2, 3], [4, 5], [6, 7]]
