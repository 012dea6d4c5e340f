"""The model a server answers with, followed when ``@champion`` moves.

A request takes the current :class:`~mnistops.lifecycle.versions.LoadedModel` and finishes with it,
even if a newer one is swapped in meanwhile (the swap is one attribute assignment in
:class:`ModelHolder`).
"""

from __future__ import annotations

from mnistops.lifecycle.versions import LoadedModel


class ModelHolder:
    """The current :class:`LoadedModel` (None until one loads), swapped in one assignment."""

    def __init__(self) -> None:
        self.current: LoadedModel | None = None

    def swap(self, model: LoadedModel) -> LoadedModel | None:
        """Make ``model`` current; return the one it replaces."""
        old, self.current = self.current, model
        return old
