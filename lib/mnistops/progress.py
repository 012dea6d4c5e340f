"""Progress reporting without printing from library code.

Stages take a :class:`Reporter`; the CLI passes one that draws rich progress bars, tests and
library callers get :class:`NullReporter`, which does nothing.
"""

from __future__ import annotations

from typing import Any, Protocol


class Task(Protocol):
    """One bar: ``advance`` by units of work, ``total`` may be set late (downloads)."""

    total: int | None

    def update(self, n: int) -> None:
        """Advance by ``n`` units."""

    def reset(self) -> None:
        """Start over (pooch calls this)."""

    def close(self) -> None:
        """Finish the bar."""


class Reporter(Protocol):
    """Makes tasks; one per stage or download."""

    def task(self, description: str, total: int | None = None) -> Task:
        """Start a bar."""
        ...


class _NullTask:
    total: int | None = None

    def update(self, n: int) -> None:
        pass

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _NullTask:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


class NullReporter:
    """A reporter that shows nothing."""

    def task(self, description: str, total: int | None = None) -> Task:
        """Return a task that ignores updates."""
        return _NullTask()
