"""``mnistops tracking-server``: MLflow's server on a team's database (:mod:`mnistops.tracking.server`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from mnistops.cli.app import app
from mnistops.cli.common import (
    err_console,
    flag,
)


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
    auth: Annotated[bool, flag("--auth", "Require a user name and password (MLflow's basic-auth app).")] = False,
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
    err = err_console()

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
