"""``run_notebooks.py``: build the config and the parameters, run the batch (or a grid of batches),
show progress and the summary (or ``--json``). On the same framework, and the same error-to-exit
mapping, as ``mnistops`` (:func:`mnistops.cli.common.run_guarded`).

Exit codes: 0 every notebook ran; 1 a notebook failed; 2 a mistake in the command (unknown
parameter, bad config, unreachable store), before anything ran; 130 Ctrl-C; 143 SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mnistops.cli.app import notebooks_app
from mnistops.cli.common import ConfigOpt, JsonOpt, SetOpt, emit_json, open_store, out_console, run_guarded
from mnistops.errors import ConfigError

if TYPE_CHECKING:
    from mnistops.runner.batch import BatchResult, NotebookRun

PROG = "run_notebooks.py"


@dataclass(frozen=True)
class BatchOptions:
    """What ``run_notebooks.py`` was asked, as one typed object."""

    config: Path | None = None
    sets: list[str] = field(default_factory=list)
    pairs: list[tuple[str, str]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    only: list[str] = field(default_factory=list)  # notebook names, numbers or file names
    out: Path | None = None
    as_json: bool = False
    cell_timeout: float | None = None
    notebooks: Path | None = None
    grid: Path | None = None
    workers: int = 2
    scheduler: str | None = None
    verbose: bool = False
    force: list[str] = field(default_factory=list)  # notebooks run even if reusable; ["all"]: every one
    resume: str | None = None  # "latest" or a batch id
    jobs: int | None = None  # notebooks at once (None: the cores this process may use)


def command(root: Path) -> typer.Typer:
    """The ``run_notebooks.py`` command; ``root`` is the folder of its ``notebooks/`` and ``outputs/``."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)

    @app.command(
        help="Run the notebooks in order with papermill, record the batch in MLflow, keep each executed copy."
        "\n\n\b\nrun_notebooks.py [--config FILE] [--set KEY=VALUE ...] [-p NAME VALUE ...] [-f PARAMS.yaml]"
        "\n                 [--only NAMES] [--force [NAMES]] [--resume [BATCH_ID]] [--jobs N] [--out DIR]"
        "\n                 [--json] [--cell-timeout SECONDS]"
        "\n                 [--grid GRID.yaml [--workers K | --scheduler ADDRESS]] [--notebooks DIR] [-v]",
        epilog="Exit codes: 0 every notebook ran; 1 a notebook failed; 2 a mistake in the command; "
        "130 Ctrl-C; 143 SIGTERM.",
    )
    def run_notebooks(
        ctx: typer.Context,
        config: Annotated[Path | None, typer.Option("--config", "-c", metavar="FILE", help=_HELP["config"])] = None,
        sets: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help=_HELP["set"])] = None,
        pairs: Annotated[
            list[str] | None, typer.Option("--parameter", "-p", metavar="NAME VALUE", help=_HELP["p"])
        ] = None,
        files: Annotated[
            list[Path] | None, typer.Option("--parameters-file", "-f", metavar="PARAMS.yaml", help=_HELP["f"])
        ] = None,
        only: Annotated[list[str] | None, typer.Option("--only", metavar="NAMES", help=_HELP["only"])] = None,
        force: Annotated[list[str] | None, typer.Option("--force", metavar="[NAMES]", help=_HELP["force"])] = None,
        resume: Annotated[str | None, typer.Option("--resume", metavar="[BATCH_ID]", help=_HELP["resume"])] = None,
        jobs: Annotated[int | None, typer.Option("--jobs", "-j", metavar="N", min=1, help=_HELP["jobs"])] = None,
        out: Annotated[Path | None, typer.Option("--out", metavar="DIR", help=_HELP["out"])] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
        cell_timeout: Annotated[
            float | None, typer.Option("--cell-timeout", metavar="SECONDS", help="Fail a cell that runs longer.")
        ] = None,
        notebooks: Annotated[Path | None, typer.Option("--notebooks", metavar="DIR", help=_HELP["notebooks"])] = None,
        grid: Annotated[Path | None, typer.Option("--grid", metavar="GRID.yaml", help=_HELP["grid"])] = None,
        workers: Annotated[int, typer.Option("--workers", metavar="K", help=_HELP["workers"], show_default=False)] = 2,
        scheduler: Annotated[
            str | None, typer.Option("--scheduler", metavar="ADDRESS", help=_HELP["scheduler"])
        ] = None,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details on stderr.")] = False,
    ) -> None:
        opts = _options(ctx.params)
        _logging(opts.verbose)
        raise typer.Exit(run(root, opts))

    return app


_HELP = {
    "config": "YAML config, as for `mnistops train` (default: the training notebook's defaults).",
    "set": "Override a config key, e.g. --set model.params.n_estimators=50 (repeatable).",
    "p": "Inject a notebook parameter, read as the type its notebook declares (repeatable; injected into "
    "every notebook that declares NAME).",
    "f": "A YAML mapping of notebook parameters (repeatable; -p wins).",
    "only": "Run only these notebooks: names, file names or numbers, comma-separated or repeated.",
    "force": "Run these notebooks (all, without NAMES) even where an earlier execution with the same inputs "
    "could be reused.",
    "resume": "Run a failed or killed batch again (default: the newest), with its own parameters: what "
    "completed is reused, the rest runs.",
    "jobs": "Notebooks that may run at once, each in its own kernel (default: the cores this process may "
    "use; with --grid, 1 per point); a notebook waits for those whose values it takes or that its "
    "metadata's `after` names.",
    "out": "Where the executed copies go (default: outputs/ beside run_notebooks.py).",
    "notebooks": "The notebook folder (default: notebooks/ beside run_notebooks.py).",
    "grid": "Run the batch once per point of a grid: a YAML mapping of parameter names to lists, crossed.",
    "workers": "With --grid: local Dask workers, one batch each at a time (default 2).",
    "scheduler": "With --grid: a running Dask scheduler (tcp://host:port).",
}


def parse_options(argv: Sequence[str], root: Path = Path()) -> BatchOptions:
    """What ``run_notebooks.py ARGV`` would run with (nothing runs): for checking a command line."""
    ctx = typer.main.get_command(command(root)).make_context(PROG, _joined(argv))
    return _options(ctx.params)


def _joined(argv: Sequence[str]) -> list[str]:
    """``-p NAME VALUE`` as ``-p NAME=VALUE``: the command line takes a parameter's name and value as
    two words (as papermill's ``-p`` does), the option parser one value per option. ``--force`` and
    ``--resume`` may stand alone: they then get ``all`` and ``latest``."""
    out: list[str] = []
    words = list(argv)
    while words:
        word = words.pop(0)
        out.append(word)
        if word in ("-p", "--parameter") and len(words) >= 2:
            name, value = words.pop(0), words.pop(0)
            out.append(f"{name}={value}")
        elif word in ("--force", "--resume") and (not words or words[0].startswith("-")):
            out.append("all" if word == "--force" else "latest")
    return out


def _options(p: dict[str, Any]) -> BatchOptions:
    """The typed options from what the command line parsed."""
    return BatchOptions(
        config=p["config"],
        sets=p["sets"] or [],
        pairs=[(pair.split("=", 1)[0], pair.split("=", 1)[1]) for pair in p["pairs"] or []],
        files=p["files"] or [],
        only=[n.strip() for item in p["only"] or [] for n in item.split(",") if n.strip()],
        force=[n.strip() for item in p["force"] or [] for n in item.split(",") if n.strip()],
        resume=p["resume"],
        jobs=p["jobs"],
        out=p["out"],
        as_json=p["as_json"],
        cell_timeout=p["cell_timeout"],
        notebooks=p["notebooks"],
        grid=p["grid"],
        workers=p["workers"],
        scheduler=p["scheduler"],
        verbose=p["verbose"],
    )


def main(root: Path, argv: list[str] | None = None) -> None:
    """Entry point of ``run_notebooks.py``: one line and an exit code for every failure we expect."""
    # jsonschema (under nbformat, under papermill and nbconvert) imports rfc3987-syntax when it
    # is installed (JupyterLab's jupyter-events asks for it), and that module builds a grammar at
    # import: 2 s of every batch. Notebooks use no IRI formats; jsonschema goes on without it.
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
    app = command(root)
    args = _joined(sys.argv[1:] if argv is None else argv)
    run_guarded(lambda: app(args, prog_name=PROG), stopped=": the batch run ended KILLED")


def _logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    level = logging.INFO if verbose else logging.WARNING
    handler = RichHandler(console=_console(stderr=True), show_path=False, show_time=False)
    handler.setLevel(level)
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)


def run(root: Path, opts: BatchOptions) -> int:
    """Build the batch (or the grid of batches) and run it; return the exit code."""
    from mnistops.config import load_config, notebook_mapping
    from mnistops.runner import batch, params
    from mnistops.runner.notebooks import check_needs, discover, named
    from mnistops.runner.schedule import default_jobs, dependencies

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    folder = opts.notebooks or root / "notebooks"
    notebooks = discover(folder, opts.only or None)
    # Without --config, the training notebook's own defaults are the base (as the file would be).
    base = None if opts.config is not None else params.base_config_values(discover(folder))
    cfg = load_config(opts.config, opts.sets, base=notebook_mapping(base) if base else None)
    force = [n if n == "all" else named(notebooks, n, "--force").name for n in opts.force]
    tags: dict[str, str] = {}
    if opts.resume is not None:
        notebooks, plan, tags, forced = _resumed(folder, cfg, opts)
        force = sorted(set(force) | set(forced))
    else:
        plan = params.plan(notebooks, cfg, opts.files, opts.pairs)
    check_needs(notebooks, plan)
    dependencies(notebooks)  # an `after` that points forwards: one line, before anything runs
    if opts.grid is not None:
        return _run_grid(notebooks, folder, plan, cfg, root, opts)
    progress: Any = batch.NullProgress() if opts.as_json else RichBatchProgress()
    failure: batch.BatchFailed | None = None
    with progress if isinstance(progress, RichBatchProgress) else contextlib.nullcontext():
        try:
            result = batch.run_batch(
                notebooks,
                plan,
                cfg,
                opts.out or root / "outputs",
                progress,
                opts.cell_timeout,
                extra_tags=tags,
                reuse=True,
                force=force,
                jobs=opts.jobs or default_jobs(),
            )
        except batch.BatchFailed as exc:
            failure, result = exc, exc.result
    return _report(result, failure, opts.as_json, _summary)


def _resumed(
    folder: Path, cfg: Any, opts: BatchOptions
) -> tuple[list[Any], dict[str, dict[str, Any]], dict[str, str], list[str]]:
    """The notebooks and parameters of the batch ``--resume`` names, the tag that links to it, and
    the notebooks it was told to run whatever earlier batches hold."""
    from mnistops import record
    from mnistops.runner import reuse
    from mnistops.runner.notebooks import discover
    from mnistops.tracking import store

    if opts.pairs or opts.files or opts.only or opts.grid is not None:
        raise ConfigError(
            "--resume runs the batch with its own notebooks and parameters: drop -p, -f, --only and --grid"
        )
    uri = store.absolute_uri(store.resolve_uri(cfg.tracking.uri))
    store.check_store(uri, create=False, write=True, timeout=cfg.tracking.timeout)
    run = reuse.resumable(uri, cfg.tracking.experiment, None if opts.resume == "latest" else opts.resume)
    names, plan, forced = reuse.resumed_parameters(uri, run)
    return discover(folder, names), plan, {record.BATCH_RESUMES: run.info.run_id}, forced


def _run_grid(
    notebooks: list[Any], folder: Path, plan: dict[str, dict[str, Any]], cfg: Any, root: Path, opts: BatchOptions
) -> int:
    from mnistops.runner import grid, params

    assert opts.grid is not None
    lists, points = grid.read_grid(opts.grid)
    params.check_names(list(lists), notebooks, f"--grid {opts.grid}:")
    err = _console(stderr=True)

    def on_point(row: dict[str, Any]) -> None:
        if opts.as_json:
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
        out = opts.out or root / "outputs"
        run = grid.GridRun(
            folder, opts.only, lists, points, plan, out, opts.workers, opts.scheduler, opts.cell_timeout, opts.jobs or 1
        )
        result = grid.run_grid(notebooks, run, cfg, on_point)
    except grid.GridFailed as exc:
        failure, result = exc, exc.result
    return _report(result, failure, opts.as_json, _grid_summary)


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
        mark = {
            "completed": "[green]✓[/]",
            "cached": "[cyan]↺[/]",
            "failed": "[red]✗[/]",
            "stopped": "[yellow]■[/]",
            "killed": "[yellow]■[/]",
        }.get(run.status, "?")
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
    colours = {"completed": "green", "cached": "cyan", "failed": "red", "stopped": "yellow", "killed": "yellow"}
    for nb in result.notebooks:
        colour = colours.get(nb.status, "dim")
        reused = f" (batch {nb.reused_from[:12]})" if nb.reused_from else ""
        table.add_row(
            nb.name,
            f"[{colour}]{nb.status}{reused}[/]",
            "" if nb.seconds is None else f"{nb.seconds:.1f}",
            _relative(nb.html or nb.ipynb or ""),
        )
    out.print(table)
    if result.training_run_id:
        cached = " (from the run cache)" if result.training_cached else ""
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in result.training_metrics.items())
        out.print(f"training run {result.training_run_id}{cached}: {metrics}", highlight=False)
    out.print(f"outputs     {_relative(result.out_dir)}", highlight=False)
    from mnistops.tracking import store

    out.print(store.ui_hint(result.tracking_uri, result.experiment), highlight=False, soft_wrap=True)


def _relative(path: str) -> str:
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


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
    from mnistops.tracking import store

    out.print(store.ui_hint(result.tracking_uri, run_id=result.run_id), highlight=False, soft_wrap=True)


@notebooks_app.command("diff")
def notebooks_diff(
    batch_a: Annotated[str, typer.Argument(metavar="BATCH_A", help="A notebook batch run (id or unique prefix).")],
    batch_b: Annotated[str, typer.Argument(metavar="BATCH_B", help="The batch to compare it with.")],
    out: Annotated[
        Path | None, typer.Option("--out", metavar="FILE.html", help="The page (default: ./notebook-diff-A-B.html).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """What changed between two executed suites: parameters, metrics, checked outputs, and each
    notebook's differences (nbdime), as a table and an HTML page that opens offline."""
    from mnistops.runner import diff

    _, uri = open_store(config, set_, write=False)
    result = diff.diff_batches(uri, batch_a, batch_b)
    page = diff.write_html(result, out or Path(f"notebook-diff-{result.a[:8]}-{result.b[:8]}.html"))
    if as_json:
        emit_json({**result.to_dict(), "html": str(page)})
        return
    console = out_console()
    console.print(f"batch {result.a} -> {result.b}", highlight=False)
    for name, (a, b) in result.parameters.items():
        console.print(f"  parameter {name}: {a} -> {b}", highlight=False)
    for name, (x, y) in result.metrics.items():
        console.print(f"  metric {name}: {diff.num(x)} -> {diff.num(y)} ({diff.delta(x, y)})", highlight=False)
    for nb in result.notebooks:
        what = f"only in {'B' if nb.missing == 'a' else 'A'}" if nb.missing else f"{nb.changed_cells} cells changed"
        checked = f", checked outputs changed in cells {nb.checked_changed}" if nb.checked_changed else ""
        console.print(f"  {nb.name}: {what}{checked}", highlight=False)
    console.print(f"page  {page}", highlight=False)
