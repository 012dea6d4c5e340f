"""Garbage-collector phases of a command: start-up, work, exit.

Importing MLflow, scikit-learn and their dependencies makes about a million long-lived
objects (classes, functions, module dicts). CPython's cyclic collector scans all of them each
time a full collection triggers, which makes start-up about 0.4 s slower here, and it scans
them once more while the interpreter shuts down (about 0.6 s). None of them is ever garbage.

So the CLI pauses the collector while a command starts (:func:`pause`), the pipeline freezes
what has been loaded and turns the collector back on before the long work (:func:`resume`:
frozen objects are never scanned again), and the CLI freezes everything once more just
before exiting (:func:`freeze_for_exit`). Library callers that never call :func:`pause` keep
their collector as they set it: :func:`resume` only undoes a pause.
"""

from __future__ import annotations

import gc

_paused = False


def pause() -> None:
    """Stop automatic collections until :func:`resume` (start-up: imports, store, data)."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume() -> None:
    """Undo :func:`pause`, if it paused the collector, freezing what start-up made."""
    global _paused
    if _paused:
        gc.freeze()
        gc.enable()
        _paused = False


def freeze_for_exit() -> None:
    """Nothing is left to collect: spare the interpreter's shutdown a scan of every object."""
    gc.freeze()
