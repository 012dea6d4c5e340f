"""Notebook grids: the batch once per parameter set, each batch a Dask task, all under one grid run.

``run_notebooks.py --grid GRID.yaml`` reads a mapping of notebook parameter names to lists of
values and crosses them (in the file's order, the last name varying fastest). Every name must be
declared by a notebook of the batch (checked before anything runs, as for ``-p``). Each point's
values are injected on top of the config, ``-f`` and ``-p``, as YAML typed them.

One MLflow run records the grid (``mnistops.run_type = notebook_grid``; params: the grid's lists;
artifact ``grid/points.json``). Each point is an ordinary batch (:func:`mnistops.runner.batch.run_batch`,
papermill in the Dask worker) whose run is a child of the grid run, with its executed notebooks
in ``outputs/`` and in its own artifacts. A point that fails is reported and the others go on; the
grid ends FAILED and exits 1 when any point failed.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mnistops import record
from mnistops.config import Config, read_yaml_mapping
from mnistops.errors import ConfigError, MnistopsError
from mnistops.runner.notebooks import Notebook

log = logging.getLogger(__name__)

POINT_TAG, GRID_TAG = record.GRID_POINT, record.GRID_RUN_ID


class GridFailed(MnistopsError, RuntimeError):
    """At least one point of the grid failed (the others ran)."""

    exit_code = 1

    def __init__(self, message: str, result: GridResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class GridResult:
    """What ``run_notebooks.py --grid ... --json`` prints."""

    run_id: str
    status: str
    tracking_uri: str
    workers: int
    scheduler: str
    points: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready result."""
        return asdict(self)


def read_grid(path: Path) -> tuple[dict[str, list[Any]], list[dict[str, Any]]]:
    """The grid's lists, and its points (the lists crossed, in the file's order)."""
    data = read_yaml_mapping(path, what="grid file")
    if not data:
        raise ConfigError(f"grid file {path} is empty: give parameter names, each with a list of values")
    for name, values in data.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid file {path}: {name} must be a non-empty list of values, e.g. {name}: [1, 2]")
    names = list(data)
    points = [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(data[n] for n in names))]
    return data, points


def point_parameters(
    plan: dict[str, dict[str, Any]], notebooks: Sequence[Notebook], point: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """The batch's parameters with ``point``'s values put into every notebook that declares them."""
    out = {name: dict(values) for name, values in plan.items()}
    for nb in notebooks:
        for name, value in point.items():
            if name in nb.parameters:
                out[nb.name][name] = value
    return out


def run_point(
    index: int,
    point: dict[str, Any],
    notebooks_dir: str,
    only: list[str],
    parameters: dict[str, Any],
    config: dict[str, Any],
    out_base: str,
    grid_run_id: str,
    cell_timeout: float | None,
    cwd: str,
    jobs: int = 1,
) -> dict[str, Any]:
    """One batch, in a Dask worker: its result as a row, failed or not (never raises); ``jobs``
    of its notebooks at once (the grid's workers already run several batches side by side)."""
    from mnistops.config import build_config
    from mnistops.runner import batch
    from mnistops.runner.notebooks import discover

    t0 = time.perf_counter()
    row: dict[str, Any] = {
        "point": index,
        "params": point,
        "status": "FAILED",
        "run_id": None,
        "error": None,
        "out_dir": None,
        "training_run_id": None,
        "metrics": {},
    }
    try:
        notebooks = discover(Path(notebooks_dir), only or None)
        cfg = build_config(config)
        tags = {
            record.PARENT_RUN_ID: grid_run_id,
            GRID_TAG: grid_run_id,
            POINT_TAG: str(index),
            record.RUN_NAME: f"grid-{index}",
        }
        try:
            result = batch.run_batch(
                notebooks,
                parameters,
                cfg,
                Path(out_base),
                None,
                cell_timeout,
                cwd=Path(cwd),
                extra_tags=tags,
                jobs=jobs,
            )
        except batch.BatchFailed as exc:
            result, row["error"] = exc.result, str(exc)
        row.update(
            status=result.status,
            run_id=result.run_id,
            out_dir=result.out_dir,
            training_run_id=result.training_run_id,
            metrics=result.training_metrics,
        )
    except Exception as exc:  # this point's failure is its own; the grid goes on
        row["error"] = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
    row["seconds"] = round(time.perf_counter() - t0, 3)
    return row


@dataclass(frozen=True)
class GridRun:
    """What a grid runs: the notebooks' folder and choice, the grid's lists and crossed points,
    each notebook's parameters, where the copies go, and on which Dask cluster."""

    notebooks_dir: Path
    only: list[str]
    lists: dict[str, list[Any]]
    points: list[dict[str, Any]]
    plan: dict[str, dict[str, Any]]
    out_base: Path
    workers: int = 2
    scheduler: str | None = None
    cell_timeout: float | None = None
    jobs: int = 1  # notebooks at once within each point's batch


def run_grid(
    notebooks: Sequence[Notebook], grid: GridRun, cfg: Config, on_point: Callable[[dict[str, Any]], None] | None = None
) -> GridResult:
    """Run the batch once per point on Dask; see the module's docstring.

    Raises:
        GridFailed: a point failed (the grid run ended FAILED; the others ran).
    """
    from mnistops import cluster
    from mnistops.runner.batch import make_out_base
    from mnistops.tracking import housekeeping, store

    uri = store.absolute_uri(store.resolve_uri(cfg.tracking.uri))
    store.check_store(uri, timeout=cfg.tracking.timeout)
    housekeeping.tidy(uri)
    make_out_base(grid.out_base)
    t0 = time.perf_counter()
    with cluster.connect(grid.workers, grid.scheduler) as dask:
        tags = {
            record.RUN_TYPE: "notebook_grid",
            record.NOTEBOOKS: ",".join(nb.name for nb in notebooks),
            record.RUN_NAME: cfg.tracking.run_name or "notebook-grid",
        }
        with store.tracked_run(uri, cfg.tracking.experiment, tags[record.RUN_NAME], tags) as run:
            result = GridResult(run.info.run_id, "RUNNING", uri, dask.workers, "local" if dask.local else dask.address)
            _log_grid(grid, dask.workers)
            result.points = _run_points(dask, notebooks, grid, cfg, uri, run.info.run_id, on_point)
            _finish(result, len(grid.points), round(time.perf_counter() - t0, 3))
    return result


def _log_grid(grid: GridRun, workers: int) -> None:
    import mlflow

    mlflow.log_params({f"grid.{name}": json.dumps(values) for name, values in grid.lists.items()})
    mlflow.log_params({"grid.points": len(grid.points), "grid.workers": workers})


def _run_points(
    dask: Any,
    notebooks: Sequence[Notebook],
    grid: GridRun,
    cfg: Config,
    uri: str,
    grid_id: str,
    on_point: Callable[[dict[str, Any]], None] | None,
) -> list[dict[str, Any]]:
    """Each point as a Dask task, its row as it ends (failed or not); every row."""
    import mlflow
    from distributed import as_completed

    from mnistops.tracking import housekeeping

    config = {**cfg.to_dict(), "tracking": {**cfg.to_dict()["tracking"], "uri": uri}}
    common = (str(grid.notebooks_dir), grid.only)
    rest = (config, str(grid.out_base.resolve()), grid_id, grid.cell_timeout, str(Path.cwd()), grid.jobs)
    futures = [
        dask.client.submit(
            run_point,
            i,
            point,
            *common,
            point_parameters(grid.plan, notebooks, point),
            *rest,
            key=f"mnistops-grid-{grid_id}-{i}",
            pure=False,
        )
        for i, point in enumerate(grid.points)
    ]
    rows: dict[int, dict[str, Any]] = {}
    try:
        for fut in as_completed(futures, loop=dask.client.loop):
            i = futures.index(fut)
            rows[i] = _row(fut, i, grid.points[i])
            if on_point is not None:
                on_point(rows[i])
    finally:
        for fut in futures:
            fut.cancel()
        # A batch whose worker died left its run RUNNING: it ends FAILED, as its point did.
        housekeeping.end_children(uri, grid_id, "FAILED", f"notebook grid {grid_id}: its worker is gone")
        mlflow.log_dict({"points": [rows[i] for i in sorted(rows)]}, "grid/points.json")
    return [rows[i] for i in sorted(rows)]


def _finish(result: GridResult, n_points: int, seconds: float) -> None:
    """The grid's metrics and status; a failed point fails the grid (raised)."""
    import mlflow

    failed = [r for r in result.points if r["status"] != "FINISHED"]
    result.seconds = seconds
    mlflow.log_metrics(
        {"points_finished": n_points - len(failed), "points_failed": len(failed), "time_total_s": seconds}
    )
    if failed:
        result.status = "FAILED"
        first = failed[0]
        raise GridFailed(
            f"{len(failed)} of {n_points} grid points failed; point {first['point']} "
            f"({describe(first['params'])}): {first['error']}",
            result,
        )
    result.status = "FINISHED"


def _row(fut: Any, index: int, point: dict[str, Any]) -> dict[str, Any]:
    try:
        row: dict[str, Any] = fut.result()
        return row
    except Exception as exc:
        from mnistops.cluster import task_failure

        return {
            "point": index,
            "params": point,
            "status": "FAILED",
            "run_id": None,
            "error": task_failure(exc),
            "out_dir": None,
            "training_run_id": None,
            "metrics": {},
            "seconds": 0.0,
        }


def describe(point: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in point.items())
