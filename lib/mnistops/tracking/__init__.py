"""Tracking: the MLflow store and runs that always end (:mod:`~mnistops.tracking.store`), the
code and environment a run used (:mod:`~mnistops.tracking.provenance`), and looking at runs:
the run cache, ``runs list`` and ``runs compare`` (:mod:`~mnistops.tracking.runs`)."""
