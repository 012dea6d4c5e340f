"""The command line of ``run_notebooks.py``: build the config and the parameters, run the batch,
show progress and the summary (or ``--json``), and turn failures into one line and an exit code.

Exit codes: 0 every notebook ran; 1 a notebook failed; 2 a mistake in the command (unknown
parameter, bad config, unreachable store), before anything ran; 130 Ctrl-C; 143 SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnistops.errors import MnistopsError

if TYPE_CHECKING:
    from mnistops.runner.batch import BatchResult, NotebookRun


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    console = Console(stderr=stderr)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=160)
    return console


class RichBatchProgress:
    """Which notebook, which cell, how long: a live line per notebook on a terminal, plain lines otherwise."""

    def __init__(self) -> None:
        self.err = _console(stderr=True)
        self.live = self.err.is_terminal
        self.progress: Any = None
        self.tasks: dict[str, Any] = {}
        self.started: dict[str, float] = {}

    def __enter__(self) -> RichBatchProgress:
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(bar_width=20),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.err,
            )
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def notebook_started(self, name: str, n_cells: int) -> None:
        """Add the notebook's line."""
        self.started[name] = time.perf_counter()
        if self.progress is not None:
            self.tasks[name] = self.progress.add_task(name, total=n_cells)
        else:
            self.err.print(f"▶ {name} ({n_cells} cells)", highlight=False)

    def cell_started(self, name: str, index: int, summary: str) -> None:
        """Show the running cell."""
        if self.progress is not None and name in self.tasks:
            from rich.markup import escape

            self.progress.update(
                self.tasks[name],
                completed=index,
                description=f"{name} [dim]cell {index + 1}: {escape(summary[:50])}[/]",
            )

    def notebook_finished(self, run: NotebookRun) -> None:
        """Close the notebook's line with its outcome."""
        mark = {"completed": "[green]✓[/]", "failed": "[red]✗[/]", "killed": "[yellow]■[/]"}.get(run.status, "?")
        if self.progress is not None and run.name in self.tasks:
            task = self.progress.tasks[self.tasks[run.name]]
            done = task.total if run.status == "completed" else task.completed
            self.progress.update(self.tasks[run.name], completed=done, description=f"{mark} {run.name}")
            self.progress.stop_task(self.tasks[run.name])
        else:
            self.err.print(f"{mark} {run.name} {run.status} in {run.seconds or 0:.1f} s", highlight=False)


def _summary(result: BatchResult) -> None:
    from rich.table import Table

    out = _console()
    table = Table(title=f"notebook batch {result.run_id} ({result.status})")
    for col in ("notebook", "status", "seconds", "executed copy"):
        table.add_column(col, justify="right" if col == "seconds" else "left")
    colours = {"completed": "green", "failed": "red", "killed": "yellow"}
    for nb in result.notebooks:
        colour = colours.get(nb.status, "dim")
        table.add_row(
            nb.name,
            f"[{colour}]{nb.status}[/]",
            "" if nb.seconds is None else f"{nb.seconds:.1f}",
            _relative(nb.html or nb.ipynb or ""),
        )
    out.print(table)
    if result.training_run_id:
        cached = " (from the run cache)" if result.training_cached else ""
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in result.training_metrics.items())
        out.print(f"training run {result.training_run_id}{cached}: {metrics}", highlight=False)
    out.print(f"outputs     {_relative(result.out_dir)}", highlight=False)
    out.print(f"open the UI: mlflow ui --backend-store-uri {result.tracking_uri}", highlight=False)


def _relative(path: str) -> str:
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def run(
    root: Path,
    config: Path | None,
    sets: list[str],
    pairs: list[tuple[str, str]],
    files: list[Path],
    only: list[str],
    out: Path | None,
    as_json: bool,
    cell_timeout: float | None,
    notebooks_dir: Path | None,
    grid: Path | None = None,
    workers: int = 2,
    scheduler: str | None = None,
) -> int:
    """Build the batch (or the grid of batches) and run it; return the exit code."""
    from mnistops.config import load_config, notebook_mapping
    from mnistops.runner import batch, params
    from mnistops.runner.notebooks import discover

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    notebooks = discover(notebooks_dir or root / "notebooks", only or None)
    # Without --config, the training notebook's own defaults are the base (as the file would be).
    base = None if config is not None else params.base_config_values(discover(notebooks_dir or root / "notebooks"))
    cfg = load_config(config, sets, base=notebook_mapping(base) if base else None)
    plan = params.plan(notebooks, cfg, files, pairs)
    if grid is not None:
        return _run_grid(
            notebooks,
            notebooks_dir or root / "notebooks",
            only,
            grid,
            plan,
            cfg,
            out or root / "outputs",
            workers,
            scheduler,
            cell_timeout,
            as_json,
        )
    progress: Any = batch.NullProgress() if as_json else RichBatchProgress()
    failure: batch.BatchFailed | None = None
    with progress if isinstance(progress, RichBatchProgress) else contextlib.nullcontext():
        try:
            result = batch.run_batch(notebooks, plan, cfg, out or root / "outputs", progress, cell_timeout)
        except batch.BatchFailed as exc:
            failure, result = exc, exc.result
    return _report(result, failure, as_json, _summary)


def _run_grid(
    notebooks: list[Any],
    notebooks_dir: Path,
    only: list[str],
    grid_file: Path,
    plan: dict[str, dict[str, Any]],
    cfg: Any,
    out: Path,
    workers: int,
    scheduler: str | None,
    cell_timeout: float | None,
    as_json: bool,
) -> int:
    from mnistops.runner import grid, params

    lists, points = grid.read_grid(grid_file)
    params.check_names(list(lists), notebooks, f"--grid {grid_file}:")
    err = _console(stderr=True)

    def on_point(row: dict[str, Any]) -> None:
        if as_json:
            return
        from rich.markup import escape

        mark = "[green]✓[/]" if row["status"] == "FINISHED" else "[red]✗[/]"
        err.print(
            f"{mark} point {row['point']} ({escape(grid.describe(row['params']))}) {row['status'].lower()} "
            f"in {row.get('seconds', 0):.1f} s",
            highlight=False,
            soft_wrap=True,
        )

    failure: grid.GridFailed | None = None
    try:
        result = grid.run_grid(
            notebooks, notebooks_dir, only, lists, points, plan, cfg, out, workers, scheduler, cell_timeout, on_point
        )
    except grid.GridFailed as exc:
        failure, result = exc, exc.result
    return _report(result, failure, as_json, _grid_summary)


def _report(result: Any, failure: Exception | None, as_json: bool, summary: Any) -> int:
    """The result as one JSON object or as a summary; then the failure, if any, raised."""
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
        sys.stdout.flush()
    else:
        summary(result)
    if failure is not None:
        raise failure
    return 0


def _grid_summary(result: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    out = _console()
    table = Table(
        title=f"notebook grid {result.run_id} ({result.status}): {len(result.points)} points, {result.workers} workers"
    )
    for col in ("point", "parameters", "status", "accuracy", "seconds", "batch run", "executed copies"):
        table.add_column(col, justify="right" if col in ("point", "accuracy", "seconds") else "left")
    for row in result.points:
        colour = "green" if row["status"] == "FINISHED" else "red"
        acc = row["metrics"].get("accuracy")
        table.add_row(
            str(row["point"]),
            escape(", ".join(f"{k}={v}" for k, v in row["params"].items())),
            f"[{colour}]{row['status']}[/]",
            "" if acc is None else f"{acc:.4f}",
            f"{row.get('seconds', 0):.1f}",
            row["run_id"] or "",
            _relative(row["out_dir"] or ""),
        )
    out.print(table)
    for row in result.points:
        if row["error"]:
            out.print(f"[red]point {row['point']}[/]: {escape(row['error'])}", highlight=False, soft_wrap=True)
    out.print(f"open the UI: mlflow ui --backend-store-uri {result.tracking_uri}", highlight=False)


def parser() -> argparse.ArgumentParser:
    """The arguments of ``run_notebooks.py``."""
    p = argparse.ArgumentParser(
        prog="run_notebooks.py",
        description="Run the notebooks in order with papermill, record the batch in MLflow, keep each executed copy.",
        epilog="Exit codes: 0 every notebook ran; 1 a notebook failed; 2 a mistake in the command; "
        "130 Ctrl-C; 143 SIGTERM.",
    )
    p.add_argument(
        "--config",
        "-c",
        type=Path,
        metavar="FILE",
        help="YAML config, as for `mnistops train` (default: the training notebook's defaults)",
    )
    p.add_argument(
        "--set",
        "-s",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set model.params.n_estimators=50 (repeatable)",
    )
    p.add_argument(
        "-p",
        "--parameter",
        dest="pairs",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="inject a notebook parameter, read as the type its notebook "
        "declares (repeatable; injected into every notebook that declares NAME)",
    )
    p.add_argument(
        "-f",
        "--parameters-file",
        dest="files",
        type=Path,
        action="append",
        default=[],
        metavar="PARAMS.yaml",
        help="a YAML mapping of notebook parameters (repeatable; -p wins)",
    )
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAMES",
        help="run only these notebooks: names, file names or numbers, comma-separated or repeated",
    )
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="where the executed copies go (default: outputs/ beside run_notebooks.py)",
    )
    p.add_argument("--json", dest="as_json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--cell-timeout", type=float, metavar="SECONDS", help="fail a cell that runs longer than this")
    p.add_argument(
        "--notebooks",
        type=Path,
        metavar="DIR",
        help="the notebook folder (default: notebooks/ beside run_notebooks.py)",
    )
    p.add_argument(
        "--grid",
        type=Path,
        metavar="GRID.yaml",
        help="run the batch once per point of a grid: a YAML mapping of parameter names to lists, crossed",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        metavar="K",
        help="with --grid: local Dask workers, one batch each at a time (default 2)",
    )
    p.add_argument("--scheduler", metavar="ADDRESS", help="with --grid: a running Dask scheduler (tcp://host:port)")
    p.add_argument("--verbose", "-v", action="store_true", help="log details on stderr")
    return p


def main(root: Path, argv: list[str] | None = None) -> None:
    """Entry point of ``run_notebooks.py``: one line and an exit code for every failure we expect."""
    from mnistops import gc_phases
    from mnistops.tracking.store import Terminated

    # jsonschema (under nbformat, under papermill and nbconvert) imports rfc3987-syntax when it
    # is installed (JupyterLab's jupyter-events asks for it), and that module builds a grammar at
    # import: 2 s of every batch. Notebooks use no IRI formats; jsonschema goes on without it.
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
    gc_phases.pause()
    err = _console(stderr=True)
    args = parser().parse_args(argv)
    from rich.logging import RichHandler

    handler = RichHandler(console=err, show_path=False, show_time=False)
    handler.setLevel(logging.INFO if args.verbose else logging.WARNING)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s", handlers=[handler], force=True
    )
    only = [n.strip() for item in args.only for n in item.split(",") if n.strip()]
    try:
        pairs = [tuple(p) for p in args.pairs]
        code = run(
            root,
            args.config,
            args.sets,
            pairs,
            args.files,
            only,
            args.out,
            args.as_json,
            args.cell_timeout,
            args.notebooks,
            args.grid,
            args.workers,
            args.scheduler,
        )
        sys.exit(code)
    except MnistopsError as exc:
        from rich.markup import escape

        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("[bold red]interrupted[/]: the batch run ended KILLED")
        sys.exit(130)
    except Terminated:
        err.print("[bold red]terminated[/]: the batch run ended KILLED")
        sys.exit(143)
    except Exception as exc:
        from mnistops.errors import no_space
        from mnistops.tracking.store import default_store_path

        full = no_space(exc, default_store_path())
        if full is None:
            raise
        from rich.markup import escape

        err.print(f"[bold red]error:[/] {escape(str(full))}", highlight=False, soft_wrap=True)  # one line
        sys.exit(full.exit_code)
    finally:
        gc_phases.freeze_for_exit()
