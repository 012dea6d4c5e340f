"""Notebooks that need not run again, and batches that resume.

A notebook's **key** is a hash of what its execution depends on: its content hash (cells' types
and sources), the values injected into it (the run id an earlier notebook handed on included;
the batch's own run id left out), the data it names (a dataset's name, or the content of a local
file or folder), and the environment lock (every installed distribution and its version). When a
batch run of the same store holds an executed copy of the notebook under the same key, the new
batch reuses it: the copy (and its HTML) is logged to the new batch run, the values it handed on
are recorded there again, the notebook's line says ``cached`` and which batch it came from
(``mnistops.notebook.NAME.reused_from``). The key is recorded on a batch run only once the
executed copy is logged, so an interrupted notebook is never reused.

A batch that failed or was killed is **resumed** by running it again with its own parameters
(``parameters.json``), notebooks and ``--force`` list: those that completed are reused by their
keys (a forced one only from the batch resumed), the failed one and what follows run. The new
batch run names the one it resumes (``mnistops.batch.resumes``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from mnistops import record
from mnistops.errors import ConfigError
from mnistops.runner.notebooks import Notebook
from mnistops.tracking import store

log = logging.getLogger(__name__)

RUNNER_VALUES = ("batch_run_id",)  # set by the runner for each batch: not part of a key


def notebook_key(nb: Notebook, params: dict[str, Any], lock_sha256: str) -> str:
    """What an execution of ``nb`` with ``params`` depends on, as one hash (see the module's docstring)."""
    given = {k: v for k, v in params.items() if k not in RUNNER_VALUES}
    what = {
        "notebook": nb.sha256,
        "parameters": given,
        "data": data_identity(given.get("dataset")),
        "environment": lock_sha256,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def data_identity(dataset: Any) -> str:
    """A dataset named by the notebook: its name (a named dataset is verified against its published
    checksums), or the content of a local file or folder."""
    if not isinstance(dataset, str) or not dataset:
        return ""
    path = Path(dataset)
    if not path.exists():
        return dataset
    from mnistops.data.fingerprint import file_sha256

    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.relative_to(path) if path.is_dir() else f.name}\0{file_sha256(str(f))}\0".encode())
    return f"{dataset}:{digest.hexdigest()}"


def store_is_new(uri: str) -> bool:
    """Whether the store is a SQLite file not made yet: nothing in it to reuse, so the batch's
    kernels may start before the store is opened."""
    path = store.sqlite_path(uri)
    return path is not None and not path.exists()


def find(uri: str, experiment_id: str, name: str, key: str, within: str | None = None) -> str | None:
    """The newest batch run of the experiment holding an executed copy of ``name`` under ``key``
    (only batch run ``within``, when given)."""
    only = f" and attributes.run_id = '{within}'" if within else ""
    runs = store.client(uri).search_runs(
        [experiment_id],
        f"tags.`{record.notebook_key(name)}` = '{key}'{only}",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def copy_executed(uri: str, source: str, name: str, out_dir: Path) -> Path:
    """The executed copy of ``name`` (and its HTML, where there is one) from batch run ``source``
    into ``out_dir``; the copy's path."""
    import mlflow.artifacts

    from mnistops import processes

    with processes.temporary_directory("reuse") as tmp:
        for suffix in (".ipynb", ".html"):
            try:
                got = mlflow.artifacts.download_artifacts(
                    run_id=source, artifact_path=f"notebooks/{name}{suffix}", dst_path=tmp, tracking_uri=uri
                )
            except Exception:
                if suffix == ".ipynb":
                    raise
                continue  # a copy whose HTML could not be rendered is reused without it
            shutil.copyfile(got, out_dir / f"{name}{suffix}")
    return out_dir / f"{name}.ipynb"


def resumable(uri: str, experiment: str, batch_id: str | None) -> Any:
    """The batch run to resume: ``batch_id`` (it must be a notebook batch that failed or was
    killed), else the newest such batch of the experiment. One line for what cannot be resumed."""
    c = store.client(uri)
    exp = c.get_experiment_by_name(experiment)
    if batch_id:
        run = store.find_run(uri, batch_id)
        if run.data.tags.get(record.RUN_TYPE) != "notebook_batch":
            raise ConfigError(f"--resume {batch_id}: that run is not a notebook batch: see mnistops runs list")
        if run.info.status not in ("FAILED", "KILLED"):
            raise ConfigError(
                f"--resume {batch_id}: that batch ended {run.info.status}, nothing to resume: run the batch again"
            )
        return run
    runs = (
        []
        if exp is None
        else c.search_runs(
            [exp.experiment_id],
            f"tags.`{record.RUN_TYPE}` = 'notebook_batch' and attributes.status != 'FINISHED' "
            "and attributes.status != 'RUNNING'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    )
    if not runs:
        raise ConfigError(
            f"--resume: no failed or killed notebook batch in experiment {experiment!r}: nothing to resume"
        )
    return runs[0]


def resumed_parameters(uri: str, run: Any) -> tuple[list[str], dict[str, dict[str, Any]], list[str]]:
    """The notebooks a batch ran (in order), the values it injected into each, and those it was
    told to run whatever earlier batches hold (``--force``)."""
    from mnistops.tracking.runs import artifact_bytes

    tags = run.data.tags
    names = [n for n in tags.get(record.NOTEBOOKS, "").split(",") if n]
    parameters = json.loads(artifact_bytes(uri, run.info.run_id, "parameters.json"))
    return names, parameters, [n for n in tags.get(record.BATCH_FORCED, "").split(",") if n]
