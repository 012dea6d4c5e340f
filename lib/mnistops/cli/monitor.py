"""``mnistops monitor`` and ``monitor simulate``: a served model's inputs and answers checked
against its training reference (:mod:`mnistops.monitor`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mnistops.cli.app import app
from mnistops.cli.common import (
    ConfigOpt,
    JsonOpt,
    SetOpt,
    emit_json,
    open_store,
    out_console,
)
from mnistops.errors import MnistopsError

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
    from mnistops.lifecycle.versions import model_uri
    from mnistops.monitor.watch import monitor, read_batch

    if batch is not None:  # the user's file is checked before the store is asked anything
        read_batch(batch, load_config(config, set_ or []).monitor.max_batch_images)
    cfg, uri = open_store(config, set_)
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
        emit_json(result)
    else:
        from rich.markup import escape

        out = out_console()
        colour = {"ok": "green", "warn": "yellow", "drift": "red"}
        for c in result["checks"]:
            out.print(
                f"[{colour[c['verdict']]}]{c['verdict']:>5}[/]  {c['name']:<20} p={c['p_value']:.3g}  "
                f"{escape(c['summary'])}",
                highlight=False,
                soft_wrap=True,
            )
        for kind, what in (("labeled", "measured"), ("estimated", "estimated")):
            a = result["accuracy"][kind]
            if a is not None:
                out.print(
                    f"accuracy {what:<9} {a['accuracy']:.3f} [{a['low']:.3f}, {a['high']:.3f}] over {a['n']:,} inputs",
                    highlight=False,
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
    out_console().print(f"[green]✓[/] {out}: {n} held-out images, shift {shift} ({severity}), seed {seed}")
