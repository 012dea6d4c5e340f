"""``mnistops sweep``: an Optuna search on Dask, each trial a tracked run (:mod:`mnistops.sweep`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mnistops.cli.app import app
from mnistops.cli.common import (
    ConfigOpt,
    JsonOpt,
    RichReporter,
    SetOpt,
    emit_json,
    err_console,
    flag,
    make_reporter,
    out_console,
    sigterm_raises,
)


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
    promote: Annotated[bool, flag("--promote", "Send the best trial through the promotion gate.")] = False,
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
    sigterm_raises()
    err = err_console()
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

    reporter = make_reporter(as_json)
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
        emit_json(result.to_dict())
    else:
        _print_sweep(result)
    if result.promotion is not None and not result.promotion["promoted"]:
        raise typer.Exit(1)


def _print_sweep(result: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    from mnistops.sweep.run import ranked

    out = out_console()
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
    from mnistops.tracking import store

    out.print(store.ui_hint(result.tracking_uri, result.experiment), highlight=False, soft_wrap=True)
