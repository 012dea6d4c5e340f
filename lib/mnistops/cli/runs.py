"""``mnistops runs list``, ``runs compare`` and ``runs lineage``: the tracked runs, side by side, and where a
served prediction came from and went."""

from __future__ import annotations

from typing import Annotated

import typer

from mnistops.cli.app import runs_app
from mnistops.cli.common import (
    ConfigOpt,
    JsonOpt,
    SetOpt,
    emit_json,
    open_store,
    out_console,
)


@runs_app.command("list")
def runs_list(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, metavar="N", help="How many runs.")] = 20,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The newest runs: id, when, model, key params, metrics, data fingerprint, champion marker."""
    from mnistops.tracking.runs import list_runs

    cfg, uri = open_store(config, set_, write=False)
    rows = list_runs(uri, cfg.tracking.experiment, cfg.tracking.registered_model, limit)
    if as_json:
        emit_json(rows)
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
    out_console().print(table)
    out_console().print(
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

    _, uri = open_store(config, set_, write=False)
    run_a, run_b = find_run(uri, run_a).info.run_id, find_run(uri, run_b).info.run_id
    diff = compare_runs(uri, run_a, run_b)
    if as_json:
        emit_json(diff)
        return
    out = out_console()
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


@runs_app.command("lineage")
def runs_lineage(
    prediction_id: Annotated[str, typer.Argument(metavar="PREDICTION_ID", help="An id /predict answered with.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Where a served prediction came from and went: the version that answered it, that version's
    run and data (fingerprint and parents), its feedback, and the runs that trained on it."""
    from mnistops.monitor.production import lineage
    from mnistops.tracking.predlog import open_log

    cfg, uri = open_store(config, set_, write=False)
    found = lineage(uri, open_log(cfg.serve.prediction_log, uri), prediction_id)
    if as_json:
        emit_json(found)
        return
    out = out_console()
    truth = "no label came back" if found["truth"] < 0 else f"labeled {found['truth']}"
    out.print(f"prediction {prediction_id}: {found['label']} ({found['confidence']:.2f}) at {found['ts']}, {truth}")
    out.print(f"  answered by {found['model']} version {found['version']}")
    by = found["answered_by"]
    if by:
        out.print(f"  its run {by['run_id']}, data {by['data_fingerprint'][:12]}")
        for parent in (by["parents"] or {}).get("extra", []):
            out.print(f"    + feedback {parent['fingerprint'][:12]}: {parent['n']} labeled, {parent.get('from', '')}..")
    for run in found["trained_into"]:
        out.print(f"  trained into run {run['run_id']} (version {run['model_version'] or 'not registered'})")
    if not found["trained_into"]:
        out.print("  no training run has used it yet")
