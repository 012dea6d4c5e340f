"""What production tells: a window of the prediction log as a feedback set, and one prediction's
lineage.

``mnistops data from-log --since 7d OUT.npz`` writes the logged inputs of a window with the labels
that came back through ``POST /feedback`` (:func:`from_log`); a config's ``data.extra`` trains on
them (:mod:`mnistops.data.extras`). ``mnistops runs lineage PREDICTION_ID`` follows one prediction
to the version that answered it, that version's run and data, and the runs that trained on it
(:func:`lineage`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from mnistops import record
from mnistops.data import extras
from mnistops.errors import DataError, MnistopsError, TrackingError
from mnistops.monitor.watch import window_start
from mnistops.tracking import logdb, predlog, store
from mnistops.tracking.logdb import Target

WHEN = "%Y-%m-%dT%H:%M:%SZ"


def from_log(
    log_path: Target, since: str, out: Path, labeled_only: bool = False, hold_back: float = 0.0
) -> dict[str, Any]:
    """Write the predictions logged since ``since`` (a duration or an ISO time) as a feedback set
    at ``out``; return its meta record (fingerprint, counts, window, versions).

    ``hold_back`` (a share, 0 to 1) leaves the newest labeled predictions out of the set: a model
    trained on it can then be judged by the gate's replay on labeled inputs it never saw.

    Raises:
        MnistopsError: the window holds no predictions (or, ``labeled_only``, no labeled one).
        DataError: ``out`` cannot be written; nothing is left behind.
    """
    if out.suffix != ".npz":
        raise DataError(f"{out} does not end in .npz: name the feedback set OUT.npz")
    if not 0.0 <= hold_back < 1.0:
        raise MnistopsError(f"--hold-back {hold_back} is not a share: give a number from 0 to below 1, e.g. 0.2")
    now = time.time()
    start = window_start(since, now)
    rows = predlog.read(log_path, since=start, until=now, max_rows=extras.MAX_IMAGES)
    labeled = np.flatnonzero(rows["truth"] >= 0)
    held = labeled[len(labeled) - int(np.ceil(hold_back * len(labeled))) :] if hold_back else labeled[:0]
    keep = np.ones(len(rows["truth"]), bool) if not labeled_only else rows["truth"] >= 0
    keep[held] = False
    images, labels, ids = rows["images"][keep], rows["truth"][keep], rows["pid"][keep]
    if not len(labels):
        what = "labeled predictions" if labeled_only and len(rows["ts"]) else "predictions"
        where, when = logdb.describe(log_path), time.strftime(WHEN, time.gmtime(start))
        raise MnistopsError(
            f"the prediction log {where} holds no {what} since {when}: "
            + ("label some through POST /feedback first" if what == "labeled predictions" else "give a longer --since")
        )
    versions = sorted({f"{m}/{v}" for m, v in zip(rows["model"][keep], rows["version"][keep], strict=True)})
    meta = {
        "log": logdb.describe(log_path),
        "since": since,
        "from": time.strftime(WHEN, time.gmtime(start)),
        "until": time.strftime(WHEN, time.gmtime(now)),
        "labeled_only": labeled_only,
        "labeled": int((labels >= 0).sum()),
        "held_back": len(held),
        "model_versions": versions,
        "made": time.strftime(WHEN, time.gmtime(now)),
    }
    return extras.write(out, images, labels, ids, meta)


def lineage(tracking_uri: str, log_path: Target, pid: str) -> dict[str, Any]:
    """Where one prediction came from and went: the version that answered, its run, that run's
    data (fingerprint and parents), and the training runs whose data included this prediction.

    Raises:
        MnistopsError: the log does not hold ``pid``.
    """
    import json

    from mnistops.lifecycle.versions import resolve
    from mnistops.tracking.runs import feedback_ids, runs_with_tag

    pred = predlog.lookup(log_path, pid)
    if pred is None:
        raise MnistopsError(
            f"the prediction log {logdb.describe(log_path)} holds no prediction {pid!r} (or it is past retention)"
        )
    out: dict[str, Any] = {"prediction_id": pid, **pred, "ts": time.strftime(WHEN, time.gmtime(pred["ts"]))}
    try:
        _, _, run_id = resolve(f"models:/{pred['model']}/{pred['version']}", tracking_uri)
    except TrackingError:  # the version was deleted since
        run_id = ""
    out["answered_by"] = None
    if run_id:
        run = store.get_run(tracking_uri, run_id)
        tags = run.data.tags
        parents = tags.get(record.DATA_PARENTS)
        out["answered_by"] = {
            "run_id": run.info.run_id,
            "data_fingerprint": tags.get(record.DATA_FINGERPRINT, ""),
            "parents": json.loads(parents) if parents else None,
        }
    out["trained_into"] = [
        {"run_id": r.info.run_id, "model_version": r.data.tags.get(record.MODEL_VERSION, "")}
        for r in runs_with_tag(tracking_uri, record.DATA_PARENTS)
        if pid in feedback_ids(tracking_uri, r.info.run_id)
    ]
    return out


def simulate_served(tracking_uri: str, model_uri: str, images: np.ndarray, labels: np.ndarray, log_path: Path) -> int:
    """What a server answering ``images`` and told their ``labels`` would have logged: the model's
    answers in a fresh prediction log at ``log_path`` (one there before is replaced), each labeled
    in its feedback table (the retraining notebook's demonstration, without a server). Returns how
    many it logged."""
    from mnistops.lifecycle.versions import load

    model = load(model_uri, tracking_uri)
    for old in log_path.parent.glob(f"{log_path.name}*"):  # a demonstration starts from a fresh log
        old.unlink()
    writer = predlog.PredictionLog(log_path)
    try:
        ids = writer.add(model.name, model.version, images, model.predict_proba(images), "/predict")
        writer.flush()
    finally:
        writer.close()
    predlog.add_feedback(log_path, [(pid, int(y), False) for pid, y in zip(ids, labels, strict=True)])
    return len(ids)
