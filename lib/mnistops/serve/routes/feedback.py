"""``POST /feedback``: the true label of an answered prediction, stored beside the prediction log."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request

from mnistops.serve.bodies import read_body
from mnistops.serve.inputs import BadInput, feedback_from_json
from mnistops.serve.state import State
from mnistops.tracking import predlog

router = APIRouter()

NO_LOG = "this server keeps no prediction log (serve.prediction_log is null): there is nothing to label"


@router.post("/feedback")
async def feedback(request: Request, s: State) -> Any:
    """Store ``{"prediction_id": ..., "label": 0-9}`` (or a list); all or none. 404 for an id
    the log does not hold, 409 for one already labeled (``"replace": true`` changes it)."""
    if s.predlog is None:
        raise BadInput(409, NO_LOG)
    body = await read_body(request, s.cfg.max_body_bytes)
    items = await s.off_loop(feedback_from_json, body, s.cfg.max_batch)
    try:
        pairs = await s.off_loop(_store, s.predlog, items)
    except predlog.UnknownPredictionError as exc:
        raise BadInput(404, f"no prediction {exc.ids[0]} in the log: send an id /predict answered with") from None
    except predlog.AlreadyLabeledError as exc:
        raise BadInput(409, f'prediction {exc.ids[0]} is labeled already: send "replace": true to change it') from None
    s.metrics.feedback.inc(len(pairs))
    accuracy, labeled = await s.off_loop(s.metrics.live_from, s.predlog.path)
    return {
        "stored": len(pairs),
        "correct": sum(predicted == given for predicted, given in pairs),
        "live_accuracy": accuracy,
        "labeled": labeled,
    }


def _store(log: predlog.PredictionLog, items: list[tuple[str, int, bool]]) -> list[tuple[int, int]]:
    """:func:`~mnistops.tracking.predlog.add_feedback`; an id not found yet may be an answer of a
    moment ago that a writer still holds: this process's is flushed, and another worker's (with
    ``--workers N``) writes within :data:`~mnistops.tracking.predlog.GATHER_S`; the lookup is tried
    again until twice that has passed, then the id is unknown."""
    try:
        return predlog.add_feedback(log.path, items)
    except predlog.UnknownPredictionError:
        if not log.flush():
            raise
    deadline = time.monotonic() + 2 * predlog.GATHER_S
    while True:
        try:
            return predlog.add_feedback(log.path, items)
        except predlog.UnknownPredictionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(predlog.GATHER_S / 5)
