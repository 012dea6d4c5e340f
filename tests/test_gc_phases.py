"""The collector phases: a pause is undone by resume, and resume leaves others' settings alone."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from mnistops import gc_phases


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    was = gc.isenabled()
    gc.unfreeze()  # whatever an earlier test froze
    yield
    gc_phases._paused = False
    gc.unfreeze()
    (gc.enable if was else gc.disable)()


def test_pause_then_resume_turns_the_collector_back_on_and_freezes_startup() -> None:
    gc.enable()
    gc_phases.pause()
    assert not gc.isenabled()
    startup = [object() for _ in range(10)]
    gc_phases.resume()
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(startup)


def test_resume_without_pause_changes_nothing() -> None:
    gc.disable()  # a library caller's own choice
    gc_phases.resume()
    assert not gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_resume_twice_is_harmless() -> None:
    gc.enable()
    gc_phases.pause()
    gc_phases.resume()
    gc_phases.resume()
    assert gc.isenabled()
