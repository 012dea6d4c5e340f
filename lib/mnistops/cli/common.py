"""What every command of the CLI shares: option types, the store a command works on, consoles,
JSON output, progress bars, and the one way an error becomes a line and an exit code (:func:`fail`).

Only the CLI prints and configures logging. Heavy libraries are imported inside the functions, so
that ``mnistops --help`` answers at once.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from mnistops.progress import Reporter


def flag(name: str, help: str, short: str | None = None) -> Any:
    """An on/off option, shown in --help without a type."""
    return typer.Option(name, *([short] if short else []), metavar="", help=help)


DatasetOpt = Annotated[
    str,
    typer.Option(
        "--dataset", "-d", metavar="NAME|PATH", help="mnist, fashion-mnist, or a path to a .npz / IDX folder."
    ),
]
JsonOpt = Annotated[bool, flag("--json", "Print one JSON object on stdout.")]
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


def open_store(
    config: Path | None, sets: list[str] | None, create: bool = False, write: bool = True
) -> tuple[Any, str]:
    """The config and the store's URI, checked, as every command that touches the store does:
    ``MLFLOW_TRACKING_URI``, else the config's ``tracking.uri``, else ``sqlite:///mlflow.db``."""
    from mnistops.config import load_config
    from mnistops.tracking import housekeeping
    from mnistops.tracking.store import check_store, resolve_uri

    cfg = load_config(config, sets or [])
    uri = resolve_uri(cfg.tracking.uri)
    check_store(uri, create=create, write=write, timeout=cfg.tracking.timeout)
    housekeeping.tidy(uri, write)
    return cfg, uri


def err_console() -> Console:
    """A console on stderr."""
    from rich.console import Console

    return Console(stderr=True)


def out_console() -> Console:
    """A console on stdout (160 columns when not a terminal)."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze tables into 80 columns
        console = Console(width=160)
    return console


def emit_json(obj: Any) -> None:
    """``obj`` as one JSON object on stdout."""
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
            console=err_console(),
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


def make_reporter(quiet: bool) -> Reporter | RichReporter:
    """Progress bars on a terminal, else none."""
    from mnistops.progress import NullReporter

    return NullReporter() if quiet or not sys.stderr.isatty() else RichReporter()


def with_progress(quiet: bool, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn(*args, progress=..., **kwargs)`` with progress bars unless ``quiet``."""
    reporter = make_reporter(quiet)
    if isinstance(reporter, RichReporter):
        with reporter:
            return fn(*args, progress=reporter, **kwargs)
    return fn(*args, progress=reporter, **kwargs)


def load_dataset(dataset: str, source: str = "auto", refresh: bool = False, quiet: bool = False) -> Any:
    """A dataset, with progress bars unless ``quiet``."""
    from mnistops.data import sources

    return with_progress(quiet, sources.load, dataset, source=source, refresh=refresh)


def sigterm_raises() -> None:
    """Turn SIGTERM into an exception in the main thread, so a run is marked KILLED."""
    import signal

    from mnistops.tracking.store import Terminated

    def handler(signum: int, frame: object) -> None:
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)


def fail(message: str, code: int) -> None:
    """One ``error:`` line on stderr, and exit ``code``."""
    from rich.markup import escape

    err_console().print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def run_guarded(entry: Callable[[], object], stopped: str = "") -> None:
    """Run ``entry`` (a Typer app), turning every failure we expect into one ``error:`` line and an
    exit code: 2 a mistake (a bad argument, config, store or file) or a full disk, the error's own
    code otherwise (1 a refused promotion, a failed notebook); 130 Ctrl-C, 143 SIGTERM (``stopped``
    is said after "interrupted" or "terminated"). The one mapping for ``mnistops`` and
    ``run_notebooks.py``; never a traceback for these."""
    from mnistops import gc_phases
    from mnistops.errors import MnistopsError, no_space
    from mnistops.tracking.store import Terminated, default_store_path

    gc_phases.pause()
    try:
        entry()
    except KeyboardInterrupt:
        err_console().print(f"[bold red]interrupted[/]{stopped}")
        sys.exit(130)
    except Terminated:
        err_console().print(f"[bold red]terminated[/]{stopped}")
        sys.exit(143)
    except Exception as exc:
        full = no_space(exc, default_store_path())
        if full is not None:  # whatever filled the disk on its way: one line, no traceback
            fail(str(full), full.exit_code)
        if isinstance(exc, MnistopsError):
            fail(str(exc), exc.exit_code)
        if isinstance(exc, OSError) and exc.filename:
            # A user path that cannot be read or written (read-only, missing folder): one line
            # naming it, as for our own errors.
            fail(f"{exc.strerror or exc}: {exc.filename}", 2)
        raise
    finally:
        gc_phases.freeze_for_exit()
