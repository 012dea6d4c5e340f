"""Which notebooks of a batch may run side by side, and which of them starts first.

A notebook waits for the notebooks it depends on: the nearest one before it that makes a value it
takes (its metadata's ``takes``), and those its metadata's ``after`` names (a dependency through
the store rather than a value). A notebook that declares no ``after`` waits for every notebook
before it: running side by side is what a notebook declares, never a guess. In the suite,
``01_explore``, ``02_validate`` and ``03_train`` declare ``"after": []`` (the training pipeline
validates the data itself), ``04_evaluate`` waits only for the training run it takes; ``05_serve``,
``06_monitor`` and ``07_retrain`` declare nothing and so run one after the other, after the rest.

Of the notebooks free to start, the one with the most notebooks downstream of it goes first, then
the run order: ``03_train`` before ``01_explore``, since ``04_evaluate`` waits for it. At most
``jobs`` notebooks run at once (default: the cores this process may use); with one, they run in
the run order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from mnistops.errors import ConfigError
from mnistops.runner.notebooks import Notebook


def default_jobs() -> int:
    """How many notebooks run at once when ``--jobs`` is not given: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def dependencies(notebooks: Sequence[Notebook]) -> list[set[int]]:
    """For each notebook of the batch (by index), the earlier notebooks it waits for.

    Raises:
        ConfigError: a notebook's ``after`` names a notebook of the batch that comes after it.
    """
    index = {nb.name: i for i, nb in enumerate(notebooks)}
    waits: list[set[int]] = []
    for i, nb in enumerate(notebooks):
        wait = set(range(i)) if nb.after is None else set()
        for name in nb.after or ():
            j = index.get(name)
            if j is not None and j >= i:
                raise ConfigError(
                    f"notebook {nb.name} runs after {name}, which comes after it in the run order: "
                    "rename one of them so that the one it waits for comes first"
                )
            if j is not None:  # a notebook left out of this batch (--only) is not waited for
                wait.add(j)
        for value in nb.takes.values():
            makers = [j for j in range(i) if value in notebooks[j].makes]
            if makers:
                wait.add(makers[-1])
        waits.append(wait)
    return waits


class Schedule:
    """The batch's dependencies and the order in which free notebooks start: the most downstream
    first where notebooks run side by side, else the run order."""

    def __init__(self, notebooks: Sequence[Notebook], side_by_side: bool = True) -> None:
        self.waits = dependencies(notebooks)
        downstream: list[set[int]] = [set() for _ in notebooks]
        for i in reversed(range(len(notebooks))):
            for j in self.waits[i]:
                downstream[j] |= {i} | downstream[i]
        first = (lambda i: (-len(downstream[i]), i)) if side_by_side else (lambda i: (0, i))
        self.order = sorted(range(len(notebooks)), key=first)

    def ready(self, done: set[int], started: set[int]) -> list[int]:
        """The notebooks not yet started whose dependencies are all done, first to start first."""
        return [i for i in self.order if i not in started and self.waits[i] <= done]

    def upcoming(self, started: set[int]) -> list[int]:
        """The notebooks not yet started, in the order they would start."""
        return [i for i in self.order if i not in started]
