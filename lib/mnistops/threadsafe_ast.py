"""Every ``ast.parse`` of the process takes turns: a guard against CPython's shared AST recursion count.

CPython 3.11 (and 3.12 before its fix) builds the ``ast`` objects of a parse with a recursion count
kept in interpreter state that every thread shares (python/cpython#106905): two threads parsing at
once can fail with ``SystemError: AST constructor recursion depth mismatch``. Libraries parse too,
on whatever thread they run: Jinja's lexer (``ast.literal_eval`` of each number in the templates
nbconvert compiles), MLflow's search filters, ``dask.config``, and 3.11's ``traceback`` (the caret
under a failing expression). A retry around mnistops' own parses is not enough: when ours and a
library's collide, either one fails, and the library's has no retry (a notebook grid lost 3 of its
4 points so on a loaded machine, 2026-12-05).

:func:`install` wraps ``ast.parse``, which ``ast.literal_eval`` and ``traceback`` call, in one
re-entrant lock for the whole process. One parse does not go through ``ast.parse``: anyio, which
``import mlflow`` imports, compiles its own source to an AST (``compile(..., PyCF_ONLY_AST)``) when
first imported, so :func:`install` imports it once, under the lock. The processes that parse on
several threads call it: the batch runner (a grid point is a batch) and a sweep's trials. A parse
takes microseconds to milliseconds; the lock is free but during these races. Python 3.13 keeps the
count per call.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib
import sys
import threading
from typing import Any

NEEDED = sys.version_info < (3, 13)
# Modules that parse their own source with compile(..., PyCF_ONLY_AST) when first imported.
PARSE_ON_IMPORT = ("anyio",)
_LOCK = threading.RLock()


def install() -> None:
    """Make ``ast.parse`` take the process-wide lock (once; nothing on Python 3.13 and later)."""
    if not NEEDED or getattr(ast.parse, "__mnistops_guarded__", False):
        return
    original = ast.parse

    @functools.wraps(original)
    def parse(*args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            return original(*args, **kwargs)

    parse.__mnistops_guarded__ = True  # type: ignore[attr-defined]
    with _LOCK:
        ast.parse = parse
        for name in PARSE_ON_IMPORT:
            with contextlib.suppress(ImportError):
                importlib.import_module(name)
