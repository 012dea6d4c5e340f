"""The server's Prometheus metrics, on a registry of its own (two apps in one process, as in
tests, do not share counters). With several worker processes (``--workers N``), the server sets
``PROMETHEUS_MULTIPROC_DIR`` and every worker's values are summed when ``/metrics`` is read.

* ``mnistops_requests_total{endpoint, status}`` and ``mnistops_request_errors_total{endpoint, status}``
* ``mnistops_request_seconds{endpoint}``: latency histogram
* ``mnistops_predictions_total{label}`` and ``mnistops_prediction_confidence``: what was answered
* ``mnistops_model_info{name, version, run_id}``: 1 for the model that answers now
* ``mnistops_model_loads_total``
* ``mnistops_drift_verdict``: the newest ``mnistops monitor`` verdict on the version served
  (0 ok, 1 warn, 2 drift, -1 none yet), read from the store at every poll
* ``mnistops_prediction_log_errors_total``: failed writes of the prediction log (each is tried again)
* ``mnistops_prediction_log_dropped_total``: answered predictions the log could not keep (its
  queue was full, or the database stayed unwritable at shutdown)
* ``mnistops_feedback_total``: true labels received (``POST /feedback``)
* ``mnistops_live_accuracy``: the share of the newest labeled predictions (up to 1,000) that were
  right, read from the log (every worker reads the same)
"""

from __future__ import annotations

from typing import Any


class Metrics:
    """The metric objects of one app."""

    def __init__(self) -> None:
        import os

        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # the *_created series only double what a scrape has to read

        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "mnistops_requests", "Requests by endpoint and status.", ["endpoint", "status"], registry=r
        )
        self.errors = Counter(
            "mnistops_request_errors", "Requests answered 4xx or 5xx.", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "mnistops_request_seconds",
            "Time to answer a request.",
            ["endpoint"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.predictions = Counter(
            "mnistops_predictions", "Images answered, by predicted class.", ["label"], registry=r
        )
        self.confidence = Histogram(
            "mnistops_prediction_confidence",
            "Probability of the predicted class.",
            registry=r,
            buckets=(0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
        )
        self.model = Gauge(  # the largest over live workers: each sets its own model to 1
            "mnistops_model_info",
            "1 for the model version that answers.",
            ["name", "version", "run_id"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.loads = Counter("mnistops_model_loads", "Model versions loaded.", registry=r)
        self.drift = Gauge(
            "mnistops_drift_verdict",
            "Last monitoring verdict: 0 ok, 1 warn, 2 drift, -1 none.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.drift.set(-1)
        self.log_errors = Counter(
            "mnistops_prediction_log_errors", "Failed writes of the prediction log (tried again).", registry=r
        )
        self.log_dropped = Counter(
            "mnistops_prediction_log_dropped", "Answered predictions the prediction log did not keep.", registry=r
        )
        self.feedback = Counter("mnistops_feedback", "True labels received for answered predictions.", registry=r)
        self.live_accuracy = Gauge(
            "mnistops_live_accuracy",
            "Accuracy on the newest labeled predictions (up to 1,000).",
            registry=r,
            multiprocess_mode="mostrecent",
        )

    def answered(self, labels: Any, confidence: Any) -> None:
        """Count answered images by predicted class, and their confidences."""
        import numpy as np

        for label, count in enumerate(np.bincount(labels, minlength=10).tolist()):
            if count:
                self.predictions.labels(str(label)).inc(count)
        for value in confidence.tolist():
            self.confidence.observe(value)

    def model_loaded(self, new: Any, old: Any | None) -> None:
        """Point the model gauge at ``new`` (a LoadedModel), away from ``old``."""
        if old is not None:
            self.model.labels(old.name, old.version, old.run_id).set(0)
            self.model.remove(old.name, old.version, old.run_id)
        self.model.labels(new.name, new.version, new.run_id).set(1)
        self.loads.inc()

    def live_from(self, log: Any) -> tuple[float | None, int]:
        """Set the live accuracy from the labels in the prediction log at ``log``; it, and over
        how many labeled predictions (:func:`mnistops.tracking.predlog.live_accuracy`)."""
        from mnistops.tracking import predlog

        accuracy, labeled = predlog.live_accuracy(log)
        if accuracy is not None:
            self.live_accuracy.set(accuracy)
        return accuracy, labeled

    def render(self) -> bytes:
        """The exposition text (every worker's, summed, when there are several)."""
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess

        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return bytes(generate_latest(registry))
        return bytes(generate_latest(self.registry))
