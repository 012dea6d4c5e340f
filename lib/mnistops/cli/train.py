"""``mnistops train``, ``promote``, ``rollback`` and ``reproduce``: a model trained, gated,
rolled back and reproduced."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from mnistops.cli.app import app
from mnistops.cli.common import (
    ConfigOpt,
    JsonOpt,
    RunOpt,
    SetOpt,
    emit_json,
    flag,
    open_store,
    out_console,
    sigterm_raises,
    with_progress,
)
from mnistops.errors import GateError


def _print_summary(result: Any, title: str) -> None:
    from rich.table import Table

    from mnistops.record import HEADLINE

    out = out_console()
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
    from mnistops.tracking import store

    out.print(store.ui_hint(result.tracking_uri, result.experiment), highlight=False, soft_wrap=True)


@app.command("train")
def train_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    force: Annotated[bool, flag("--force", "Train even when an identical run is cached.")] = False,
    promote: Annotated[bool, flag("--promote", "Run the promotion gate right after.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Train, evaluate and record one run in MLflow (data, code, config, environment, model)."""
    from mnistops.config import load_config
    from mnistops.pipeline import train

    cfg = load_config(config, set_ or [])
    sigterm_raises()
    result = with_progress(as_json, train, cfg, force=force)
    decision = None
    if promote:
        from mnistops.lifecycle.registry import promote as run_gate
        from mnistops.tracking.predlog import production_log

        uri = result.tracking_uri
        log = production_log(cfg.serve, uri)
        decision = run_gate(uri, result.run_id, cfg.gate, cfg.tracking.registered_model, production_log=log)
    if as_json:
        emit_json({**result.to_dict(), **({"promotion": decision.to_dict()} if decision else {})})
    else:
        if result.cached:
            out_console().print(
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
    out = out_console()
    if decision.checks:
        out.print(table)
    if decision.replay:
        out.print(decision.replay.describe(), highlight=False)
    colour = "green" if decision.verdict in ("PROMOTED", "WOULD PROMOTE") else "yellow"
    out.print(f"[{colour}]{decision.verdict}[/]: {escape(decision.reason)}", highlight=False)


@app.command("promote")
def promote_cmd(
    run_id: Annotated[
        str | None, typer.Argument(metavar="RUN_ID", help="The candidate run, or a unique prefix (or --latest).")
    ] = None,
    latest: Annotated[bool, flag("--latest", "Take the newest finished training run.")] = False,
    dry_run: Annotated[bool, flag("--dry-run", "Decide and print; move and record nothing.")] = False,
    force: Annotated[bool, flag("--force", "Promote a version that was rolled back.")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Gate a run's model: promote it to @champion if it beats the floor and the champion. Exit 1 if refused."""
    from mnistops.lifecycle.registry import promote
    from mnistops.tracking.predlog import production_log
    from mnistops.tracking.runs import latest_run
    from mnistops.tracking.store import find_run

    if run_id is None and not latest:
        raise GateError("promote needs a RUN_ID or --latest: see `mnistops runs list`")
    cfg, uri = open_store(config, set_)
    run_id = latest_run(uri, cfg.tracking.experiment) if run_id is None else find_run(uri, run_id).info.run_id
    decision = promote(
        uri, run_id, cfg.gate, cfg.tracking.registered_model, dry_run, force, production_log(cfg.serve, uri)
    )
    if as_json:
        emit_json(decision.to_dict())
    else:
        _print_decision(decision)
    if decision.verdict not in ("PROMOTED", "WOULD PROMOTE"):
        raise typer.Exit(1)


@app.command("rollback")
def rollback_cmd(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Move @champion back to the version it replaced (again: further back)."""
    from mnistops.lifecycle.registry import rollback

    cfg, uri = open_store(config, set_)
    old, new = rollback(uri, cfg.tracking.registered_model, cfg.gate.lock_wait_s)
    out_console().print(
        f"[green]✓[/] {cfg.tracking.registered_model}@champion: v{old} → v{new} (v{old} is marked rolled back)"
    )


@app.command("reproduce")
def reproduce_cmd(run_id: RunOpt, config: ConfigOpt = None, set_: SetOpt = None, as_json: JsonOpt = False) -> None:
    """Re-run a run from its record alone and compare every metric and prediction. Exit 1 on mismatch."""
    from mnistops.reproduce import reproduce
    from mnistops.tracking.store import find_run

    _, uri = open_store(config, set_)
    full = find_run(uri, run_id).info.run_id
    sigterm_raises()
    result = with_progress(as_json, reproduce, uri, full)
    if as_json:
        emit_json(result.to_dict())
    else:
        from rich.markup import escape

        out = out_console()
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
