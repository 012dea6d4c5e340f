"""One monitoring run: a window of the prediction log (or a batch file) against the served model's
reference, the verdict, the report, and a record in MLflow's ``monitoring`` experiment."""

from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnistops import record
from mnistops.config import MonitorConfig
from mnistops.errors import DataError, MnistopsError
from mnistops.evaluate import reference
from mnistops.monitor import checks

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds in ``90s``, ``30m``, ``24h``, ``7d``, ``2w``."""
    m = _DURATION.match(text)
    if not m:
        raise MnistopsError(
            f"--since {text!r} is not a duration or a time: use a number and a unit (30m, 24h, 7d) "
            "or an ISO time (2026-11-27T09:00:00Z)"
        )
    return float(m.group(1)) * _UNIT[m.group(2)]


def window_start(text: str, now: float) -> float:
    """The start of a ``--since`` window: ``now`` less a duration (``24h``), or an ISO 8601 time
    (UTC unless it says otherwise)."""
    from datetime import UTC, datetime

    if not _DURATION.match(text):
        try:
            when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            return now - parse_duration(text)  # raises the message for either form
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    return now - parse_duration(text)


def read_batch(path: Path, max_images: int = MonitorConfig().max_batch_images) -> np.ndarray:
    """``uint8 (n, 28, 28)`` from an ``.npz`` holding ``images`` (``(n, 28, 28)`` or ``(n, 784)``, 0..255),
    or a plain ``.npy`` of them; at most ``max_images``, refused from the file's header before it
    is read (:mod:`mnistops.data.arrays`)."""
    from mnistops.data.arrays import read_arrays

    if not path.exists():
        raise DataError(f"no batch file at {path}: give an .npz with an 'images' array")
    images = read_arrays(path, ["images"], max_images, "batch file")["images"]
    return checked_images(images, f"{path}: ")


def batch_labels(path: Path, n: int) -> np.ndarray:
    """The true labels a batch file carries beside its images (``labels``, as ``monitor simulate``
    writes them; -1 for an image without one), or -1 for every image when it has none."""
    import zipfile

    from mnistops.data.arrays import read_arrays

    with contextlib.suppress(zipfile.BadZipFile, OSError):
        with zipfile.ZipFile(path) as z:
            if "labels.npy" not in z.namelist():
                return np.full(n, -1, np.int64)
        labels = np.asarray(read_arrays(path, ["labels"], n, "batch file")["labels"]).astype(np.int64).ravel()
        if len(labels) != n:
            raise DataError(f"{path}: {len(labels):,} labels for {n:,} images; give one label per image, -1 if unknown")
        return labels
    return np.full(n, -1, np.int64)


@dataclass
class Watched:
    """The model a monitoring run watches."""

    uri: str
    name: str
    version: str
    run_id: str


def watched(tracking_uri: str, model_uri: str) -> Watched:
    from mnistops.lifecycle import versions

    name, version, run_id = versions.resolve(model_uri, tracking_uri)
    if not run_id and model_uri.startswith("runs:/"):
        run_id = model_uri.removeprefix("runs:/").split("/", 1)[0]
    if not run_id:
        raise MnistopsError(
            f"cannot tell which training run made {model_uri}: use models:/NAME@ALIAS or runs:/RUN_ID/model"
        )
    return Watched(model_uri, name, version, run_id)


@dataclass
class Monitored:
    """A monitoring run's outcome: ``out`` (what ``--json`` prints), and what a notebook draws."""

    out: dict[str, Any]
    result: checks.Result
    ref: reference.Reference
    images: np.ndarray


class DriftDetected(MnistopsError):
    """A notebook asked to fail on drift, and there was drift."""

    exit_code = 1


def monitor(
    tracking_uri: str,
    model_uri: str,
    *,
    batch: Path | None = None,
    since: str | None = None,
    images: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    prediction_log: str | None = None,
    report: Path | None = None,
    seed: int = 0,
    record: bool = True,
    parent_run_id: str = "",
    max_images: int = MonitorConfig().max_batch_images,
) -> Monitored:
    """Check a batch file, the ``since`` window of the prediction log, or ``images`` (with their
    true ``labels`` if known, -1 where not); see :class:`Monitored`. Besides drift, the accuracy:
    measured on the inputs whose labels are known (the log's feedback, a batch file's ``labels``)
    and estimated from the model's confidence on all of them (:mod:`mnistops.evaluate.performance`).

    Raises:
        MnistopsError: no reference for the model, an empty window, a batch of the wrong shape...
    """
    if sum(x is not None for x in (batch, since, images)) != 1:
        raise MnistopsError("give exactly one of --batch FILE or --since DURATION (e.g. --since 24h)")
    if report is not None and not report.parent.is_dir():
        raise MnistopsError(f"the report's folder {report.parent} does not exist: create it or write elsewhere")
    truth = None
    if batch is not None:  # the user's file first: a bad one is refused before the store is asked
        images = read_batch(batch, max_images)
        truth = batch_labels(batch, len(images))
    model = watched(tracking_uri, model_uri)
    ref = reference.for_run(tracking_uri, model.run_id)
    if images is not None:
        window: dict[str, Any] = {"batch": str(batch)} if batch is not None else {"batch": "given images"}
        images = checked_images(images)
        from mnistops.lifecycle import versions

        served = versions.load(model.uri, tracking_uri)
        proba = served.predict_proba(images)
        predicted, confidence = proba.argmax(axis=1), proba.max(axis=1)
    else:
        assert since is not None
        images, predicted, confidence, truth, window = _from_log(prediction_log, since, model, tracking_uri, max_images)
    started = time.perf_counter()
    result = checks.compare(ref, images, predicted, confidence, seed)
    elapsed = time.perf_counter() - started
    accuracy = accuracy_of(ref, predicted, confidence, truth if truth is not None else labels)
    about = {
        "model": f"{model.name or model.uri} version {model.version or '-'}",
        "training run": model.run_id,
        **window,
        "inputs": len(images),
        "checked at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    from mnistops.monitor.report import render

    page = render(ref, result, images, f"mnistops monitoring: {about['model']}", about, accuracy)
    out = {
        **result.to_dict(),
        "accuracy": accuracy,
        "model": dict(model.__dict__),
        "window": window,
        "seconds": round(elapsed, 3),
    }
    if report is not None:
        tmp = report.with_name(report.name + ".part")
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(report)  # never a half-written report
        out["report"] = str(report)
    if record:
        out["monitoring_run"] = _record(tracking_uri, model, result, out, page, parent_run_id)
    return Monitored(out, result, ref, images)


def checked_images(images: Any, where: str = "") -> np.ndarray:
    """``uint8 (n, 28, 28)`` from ``(n, 28, 28)`` or ``(n, 784)`` integers 0..255, else a DataError."""
    arr = np.asarray(images)
    if arr.ndim not in (2, 3) or len(arr) == 0 or int(np.prod(arr.shape[1:])) != 784:
        raise DataError(f"{where}images have shape {list(arr.shape)}; expected (n, 28, 28) or (n, 784), n >= 1")
    if arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() > 255:
        raise DataError(f"{where}images must be integers 0..255 (dtype {arr.dtype})")
    return arr.astype(np.uint8).reshape(-1, 28, 28)


def accuracy_of(
    ref: reference.Reference, predicted: np.ndarray, confidence: np.ndarray, truth: np.ndarray | None
) -> dict[str, Any]:
    """``estimated`` (from the confidence; None for a reference without a calibration) and
    ``labeled`` (on the inputs whose true label is known; None if none is), each an accuracy with
    its 95% interval and how many inputs it is over."""
    from mnistops.evaluate import performance

    out: dict[str, Any] = {"estimated": None, "labeled": None}
    if ref.calibration_x.size:
        out["estimated"] = performance.estimate(confidence, ref.calibration_x, ref.calibration_y).to_dict()
    known = np.asarray(truth) >= 0 if truth is not None else np.zeros(len(predicted), bool)
    if known.any():
        out["labeled"] = performance.measured(np.asarray(predicted)[known], np.asarray(truth)[known]).to_dict()
    return out


def _from_log(
    path: str | None, since: str, model: Watched, tracking_uri: str, max_images: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    from mnistops.tracking import logdb
    from mnistops.tracking.predlog import open_log, read

    log_path = open_log(path, tracking_uri, ", or pass --batch")
    now = time.time()
    start = window_start(since, now)
    rows = read(log_path, since=start, until=now, max_rows=max_images)
    keep = rows["version"] == model.version if model.version else np.ones(len(rows["ts"]), bool)
    if not keep.any():
        versions = sorted(set(rows["version"].tolist()))
        raise MnistopsError(
            f"the prediction log {logdb.describe(log_path)} holds no predictions of {model.name} "
            f"version {model.version} since {_human(since, start)}"
            + (f" (only of versions {', '.join(versions)})" if versions else "")
        )
    window = {
        "prediction log": logdb.describe(log_path),
        "since": _human(since, start),
        "from": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(rows["ts"][keep].min()))),
    }
    return rows["images"][keep], rows["label"][keep], rows["confidence"][keep], rows["truth"][keep], window


def _human(since: str, start: float) -> str:
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start))
    return f"{when} (the last {since.strip()})" if _DURATION.match(since) else when


def _record(
    tracking_uri: str, model: Watched, result: checks.Result, out: dict[str, Any], page: str, parent_run_id: str = ""
) -> str:
    """A run in the ``monitoring`` experiment: the verdict, each check's p-value, the report."""
    from mnistops.tracking.store import client, ensure_experiment

    c = client(tracking_uri)
    # Its artifacts beside a SQLite store, as a training's: not in the working folder (a notebook
    # kernel's is notebooks/).
    ensure_experiment(tracking_uri, record.MONITORING_EXPERIMENT)
    experiment_id = c.get_experiment_by_name(record.MONITORING_EXPERIMENT).experiment_id
    tags = {
        record.RUN_TYPE: "monitoring",
        record.MONITOR_MODEL: model.name,
        record.MONITOR_MODEL_VERSION: model.version,
        record.MONITOR_MODEL_RUN: model.run_id,
        record.MONITOR_VERDICT: result.verdict,
    }
    if parent_run_id:  # a notebook batch (06_monitor): its executed copy is the report a person opens
        tags[record.BATCH_RUN_ID] = parent_run_id
        tags[record.PARENT_RUN_ID] = parent_run_id
    run = c.create_run(experiment_id, tags=tags, run_name=f"monitor {model.name} v{model.version} {result.verdict}")
    rid = run.info.run_id
    try:
        c.log_param(rid, "window", json.dumps(out["window"]))
        c.log_param(rid, "n", result.n)
        c.log_metric(rid, "verdict", record.VERDICT_CODE[result.verdict])
        for kind, acc in out["accuracy"].items():  # estimated_accuracy, labeled_accuracy, labeled_n
            if acc is not None:
                c.log_metric(rid, f"{kind}_accuracy", acc["accuracy"])
                c.log_metric(rid, f"{kind}_n", acc["n"])
        for check in result.checks:
            c.log_metric(rid, f"p_{check.name}", check.p_value)
        c.log_text(rid, json.dumps(out, indent=2, default=str), "monitoring/result.json")
        c.log_text(rid, page, "monitoring/report.html")
        c.set_terminated(rid, "FINISHED")
    except BaseException:
        c.set_terminated(rid, "FAILED")
        raise
    return str(rid)
