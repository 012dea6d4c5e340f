"""The run record's vocabulary: every tag key, alias, artifact path and headline metric, once.

Runs, model versions and experiments carry these keys; the code that writes them and the code
that reads them import them from here, so renaming a tag is one edit (a test checks that no
``"mnistops.…"`` tag key is written out anywhere else in the package). The tags that a training
run, a notebook batch and a sweep share are built by one function,
:func:`mnistops.tracking.provenance.tags`.
"""

from __future__ import annotations

# --- what a run is -------------------------------------------------------------------------
RUN_TYPE = "mnistops.run_type"  # train, notebook_batch, notebook_grid, sweep, monitor
VERSION = "mnistops.version"  # the mnistops version that made it
EXPERIMENT = "mnistops.experiment"
MODEL = "mnistops.model"  # the model's name in the catalog (random_forest, cnn, ...)
DATASET = "mnistops.data.dataset"
DATA_FINGERPRINT = "mnistops.data_fingerprint"
SPLIT_FINGERPRINT = "mnistops.split_fingerprint"  # of the base rows (production extras are not split)
# With data.extra: the base dataset's fingerprint, and JSON naming it and each feedback set (the window)
DATA_BASE_FINGERPRINT = "mnistops.data.base_fingerprint"
DATA_PARENTS = "mnistops.data.parents"
FEEDBACK_IDS_ARTIFACT = "data/feedback_prediction_ids.txt"  # the predictions a run trained on
CONFIG_HASH = "mnistops.config_hash"
ENV_HASH = "mnistops.env_hash"
REGISTERED_MODEL = "mnistops.registered_model"
MODEL_VERSION = "mnistops.model_version"  # the version a training run registered
TRAINING_RUN_ID = "mnistops.training_run_id"  # on a batch: the training run it made or reused
TRAINING_CACHED = "mnistops.training_cached"
BATCH_RUN_ID = "mnistops.batch_run_id"  # on a run made inside a notebook batch

# --- who runs it (orphaned runs are ended by the next command) -------------------------------
OWNER_HOST, OWNER_PID, OWNER_STARTED = "mnistops.owner.host", "mnistops.owner.pid", "mnistops.owner.started"
ENDED_BY = "mnistops.ended_by"

# --- reproduction ---------------------------------------------------------------------------
REPRODUCTION_OF = "mnistops.reproduction_of"
REPRODUCTION_VERDICT = "mnistops.reproduction.verdict"
REPRODUCTION_MISMATCHES = "mnistops.reproduction.prediction_mismatches"
REPRODUCTION_MAX_METRIC_DIFF = "mnistops.reproduction.max_metric_diff"

# --- notebook batches and grids -------------------------------------------------------------
NOTEBOOKS = "mnistops.notebooks"
BATCH_FAILED_NOTEBOOK = "mnistops.batch.failed_notebook"
BATCH_ERROR = "mnistops.batch.error"
BATCH_STOPPED_AT = "mnistops.batch.stopped_at"
GRID_POINT, GRID_RUN_ID = "mnistops.grid.point", "mnistops.grid.run_id"


def notebook_sha256(name: str) -> str:
    """The batch run's tag holding notebook ``name``'s content hash."""
    return f"mnistops.notebook.{name}.sha256"


def notebook_key(name: str) -> str:
    """The batch run's tag holding what notebook ``name`` ran on (:mod:`mnistops.runner.reuse`),
    set once its executed copy is logged: a later batch with the same key reuses that copy."""
    return f"mnistops.notebook.{name}.key"


def notebook_reused_from(name: str) -> str:
    """The batch run's tag naming the batch whose executed copy of ``name`` it reused."""
    return f"mnistops.notebook.{name}.reused_from"


BATCH_RESUMES = "mnistops.batch.resumes"  # the failed or killed batch this one resumed
BATCH_FORCED = "mnistops.batch.forced"  # notebooks told to run even where they could be reused
BATCH_JOBS = "mnistops.batch.jobs"  # how many notebooks could run at once


# --- sweeps ---------------------------------------------------------------------------------
SWEEP_RUN_ID = "mnistops.sweep.run_id"
SWEEP_TRIAL = "mnistops.sweep.trial"
SWEEP_WORKER = "mnistops.sweep.worker"
SWEEP_CORES, SWEEP_CPUS = "mnistops.sweep.cores", "mnistops.sweep.cpus"
SWEEP_DATA_REUSED = "mnistops.sweep.data_reused"
SWEEP_ERROR = "mnistops.sweep.error"
SWEEP_BEST_TRIAL, SWEEP_BEST_RUN_ID = "mnistops.sweep.best_trial", "mnistops.sweep.best_run_id"
SWEEP_PROMOTION = "mnistops.sweep.promotion"

# --- the CNN's device -----------------------------------------------------------------------
DEVICE, DEVICE_NAME = "mnistops.device", "mnistops.device.name"
DEVICE_CUDA, DEVICE_CUDNN = "mnistops.device.cuda", "mnistops.device.cudnn"
TORCH = "mnistops.torch"

# --- the registry: aliases, the gate's record on a version, the alias lock ------------------
CHAMPION, PREVIOUS = "champion", "previous"
GATE_DECISION = "mnistops.gate.decision"
GATE_REASON = "mnistops.gate.reason"
GATE_CHAMPION_VERSION = "mnistops.gate.champion_version"
GATE_PROMOTED_AT = "mnistops.gate.promoted_at"
GATE_REPLAY = "mnistops.gate.replay"  # JSON: the shadow replay of production inputs at the gate
PREVIOUS_CHAMPION = "mnistops.gate.previous_champion"  # the version a champion replaced
ROLLED_BACK = "mnistops.gate.rolled_back"
LOCK_HOLDER, LOCK_STARTED, LOCK_SINCE = "mnistops.lock.holder", "mnistops.lock.started", "mnistops.lock.since"


def gate_metric(metric: str) -> str:
    """The version's tag holding the candidate's score on ``metric`` at its gate."""
    return f"mnistops.gate.{metric}"


# --- monitoring -----------------------------------------------------------------------------
MONITORING_EXPERIMENT = "monitoring"
MONITOR_MODEL = "mnistops.monitor.model"
MONITOR_MODEL_VERSION = "mnistops.monitor.model_version"
MONITOR_MODEL_RUN = "mnistops.monitor.model_run"
MONITOR_VERDICT = "mnistops.monitor.verdict"
VERDICT_CODE = {"ok": 0, "warn": 1, "drift": 2}  # the monitoring run's metric and the server's gauge

# --- where the code came from (git.<role>.*: code is mnistops' own tree, workdir the user's) --
GIT_CODE_COMMIT, GIT_CODE_DIRTY = "git.code.commit", "git.code.dirty"

# --- MLflow's own tags that mnistops sets ---------------------------------------------------
PARENT_RUN_ID = "mlflow.parentRunId"
RUN_NAME = "mlflow.runName"
SOURCE_GIT_COMMIT = "mlflow.source.git.commit"
EXPERIMENT_KIND = "mlflow.experimentKind"  # what kind of project MLflow's UI says an experiment is
CLASSIFICATION = "classification"  # ... a classification one (a machine-learning kind, not GenAI)
# MLflow 3.17's UI opens every experiment in one view per browser, GenAI unless told: this query
# opens its Model training view (runs, models, the registry). The links mnistops prints carry it.
UI_MODEL_TRAINING = "workflowType=machine_learning"

# --- metrics and artifacts ------------------------------------------------------------------
HEADLINE = ("accuracy", "f1_macro", "f1_weighted", "log_loss")  # what tables and versions show first
CONFIG_ARTIFACT = "config.yaml"
RUN_LOG_ARTIFACT = "run.log"
PREDICTIONS_ARTIFACT = "predictions/predictions.npz"
REFERENCE_ARTIFACT = "monitoring/reference.npz"
ENV_LOCK_ARTIFACT = "environment/requirements.lock.txt"
