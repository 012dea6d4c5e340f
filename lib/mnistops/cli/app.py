"""The ``mnistops`` Typer app: its groups and its global options (``-v``, ``--version``); the
commands register themselves on it from their modules (:mod:`mnistops.cli`)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer

from mnistops.cli.common import err_console, flag

app = typer.Typer(
    help="mnistops: one MNIST classifier, run the MLOps way.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Fetch, inspect, validate and export datasets.", no_args_is_help=True)
runs_app = typer.Typer(help="List and compare tracked runs.", no_args_is_help=True)
notebooks_app = typer.Typer(help="The notebook suite's batches (run them with run_notebooks.py).", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(runs_app, name="runs")
app.add_typer(notebooks_app, name="notebooks")


def _version(value: bool) -> None:
    if value:
        import mnistops

        sys.stdout.write(f"mnistops {mnistops.__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[bool, flag("--verbose", "Log progress details.", short="-v")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, metavar="", help="Print the version and exit."),
    ] = False,
) -> None:
    from rich.logging import RichHandler

    level = logging.INFO if verbose else logging.WARNING
    handler = RichHandler(console=err_console(), show_path=False, show_time=False)
    # On the handler too: a run raises the mnistops logger to INFO for its log file, and
    # those records must not reach the terminal unless asked for.
    handler.setLevel(level)
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
