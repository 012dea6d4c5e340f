"""Notebook support: ``%load_ext mnistops.ipython`` in the first code cell of every notebook.

It makes a notebook behave like the CLI where a student would notice:

* an error mnistops raises on purpose (bad data, a bad config, an unreachable store) shows as
  its one-line message, ``error: ...``, not as a traceback. The cell still fails, so papermill
  stops a batch there and its error banner names the cell; other exceptions keep their
  tracebacks (those are bugs, and the traceback is what finds them);
* a matplotlib ``Figure`` returned by a helper is shown as a PNG image (the helpers draw with
  matplotlib's object API, which Jupyter's inline backend does not pick up by itself);
* MLflow's and Alembic's INFO lines and MLflow's download bars stay out of the outputs;
* tables show whole fingerprints (64 characters).

:class:`TextProgress` is the notebook's progress reporter for long stages (``train(cfg,
progress=TextProgress())``): one line per task, finished in place when the task ends.

Loading it changes only the running kernel; nothing happens when this module is imported.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

_ERROR_STYLE = "\x1b[1;31m"
_RESET = "\x1b[0m"


def _one_line_error(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: int | None = None) -> list[str]:
    stb = [f"{_ERROR_STYLE}error:{_RESET} {value}"]
    # The kernel's own hook sends this as the cell's error output (ename, evalue, traceback),
    # so the cell fails exactly as with any exception, with one line to read.
    shell._showtraceback(etype, value, stb)
    return stb


def _figure_png(fig: Any) -> bytes:
    from mnistops.figures import png_bytes

    return png_bytes(fig)


def load_ipython_extension(ipython: Any) -> None:
    """Called by ``%load_ext mnistops.ipython``."""
    from matplotlib.figure import Figure

    from mnistops.errors import MnistopsError

    ipython.set_custom_exc((MnistopsError,), _one_line_error)
    ipython.display_formatter.formatters["image/png"].for_type(Figure, _figure_png)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # MLflow's download bars would be widgets in a notebook: noise in a cell's output.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import pandas as pd

    pd.set_option("display.max_colwidth", 100)  # fingerprints (64 characters) shown whole


def unload_ipython_extension(ipython: Any) -> None:
    """Called by ``%unload_ext mnistops.ipython``: tracebacks and figures as before."""
    from matplotlib.figure import Figure

    ipython.set_custom_exc((), None)
    ipython.display_formatter.formatters["image/png"].pop(Figure, None)


class _TextTask:
    def __init__(self, description: str, total: int | None) -> None:
        self.description, self.total, self.done = description, total, 0
        self.t0 = self.shown = time.perf_counter()
        self._write(f"{description} …")

    def _write(self, text: str, end: str = "") -> None:
        # \r rewrites the line in place: in JupyterLab as it runs, and in an executed copy,
        # where the runner merges a cell's stream outputs, only the last state is kept.
        sys.stdout.write(f"\r{text}{end}")
        sys.stdout.flush()

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.shown >= 1.0:
            self.shown = now
            count = f"{self.done}/{self.total}" if self.total else str(self.done)
            self._write(f"{self.description} … {count} ({now - self.t0:.0f} s)")

    def reset(self) -> None:
        self.done = 0

    def close(self) -> None:
        count = f"{self.done}/{self.total} " if self.total else ""
        self._write(f"{self.description}: {count}in {time.perf_counter() - self.t0:.1f} s", end="\n")


class TextProgress:
    """A :class:`~mnistops.progress.Reporter` for notebook cells: ``fit random_forest: 120/120 in 27.9 s``,
    counting up in place while the task runs."""

    def task(self, description: str, total: int | None = None) -> _TextTask:
        """Start a task: its line is written now and rewritten as it advances."""
        return _TextTask(description, total)
