"""``mnistops serve``: the model behind a URL (:mod:`mnistops.serve`)."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from mnistops.cli.app import app
from mnistops.cli.common import (
    ConfigOpt,
    SetOpt,
    err_console,
    open_store,
)


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
    cfg, uri = open_store(config, sets, write=False)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mnistops").setLevel(logging.INFO)
    s = cfg.serve
    waiting = preflight(cfg, uri)
    if waiting:
        err_console().print(f"[yellow]warning:[/] {escape(waiting)}", highlight=False, soft_wrap=True)
    err_console().print(
        f"serving {s.model or f'models:/{cfg.tracking.registered_model}@champion'} from {uri} on "
        f"http://{s.host}:{s.port} ({s.workers} worker{'s' if s.workers > 1 else ''}); Ctrl-C stops",
        highlight=False,
        soft_wrap=True,
    )
    run(cfg, uri)


# --- sweep and the team's tracking server -----------------------------------------------------
