"""zaptrix_gc_pause_seconds: every collection of a process is timed, by generation."""

from __future__ import annotations

import gc
import inspect
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY
from zaptrix import gcpauses
from zaptrix.gcpauses import watch_gc_pauses


@pytest.fixture
def watched() -> Iterator[None]:
    """The callback for this test only: it must not stay in the test process (a service installs it)."""
    watch_gc_pauses()
    yield
    while gcpauses._timed in gc.callbacks:
        gc.callbacks.remove(gcpauses._timed)


def _count(generation: str) -> float:
    value = REGISTRY.get_sample_value("zaptrix_gc_pause_seconds_count", {"generation": generation})
    return value or 0.0


def test_a_full_collection_is_timed_under_generation_2(watched: None) -> None:
    watch_gc_pauses()  # a second call adds no second callback
    assert gc.callbacks.count(gcpauses._timed) == 1
    before = _count("2")
    gc.collect()
    assert _count("2") == before + 1
    seconds = REGISTRY.get_sample_value("zaptrix_gc_pause_seconds_sum", {"generation": "2"})
    assert seconds is not None and seconds > 0


def test_a_young_collection_is_timed_under_generation_0(watched: None) -> None:
    before = _count("0")
    gc.collect(0)
    assert _count("0") == before + 1


def _collect_at_depth(frames: int) -> None:
    if frames > 0:
        _collect_at_depth(frames - 1)
    else:
        gc.collect(0)


def test_a_collection_in_the_deepest_frames_raises_nothing(
    watched: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recursive parse of hostile input can reach the recursion limit when a collection starts: what the
    callback calls must not raise there (an "Exception ignored", or a failed test under pytest). One frame
    from the limit Python cannot even enter the callback: that error has no frame of ours and is only
    printed; it is why the callback is installed by the service processes, never left in a test process."""
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    room = sys.getrecursionlimit() - len(inspect.stack())
    for margin in range(1, 30):  # from the limit up: the callback's own calls run out of room on the way
        try:
            _collect_at_depth(room - margin)
        except RecursionError:
            continue
    from_inside = [u for u in unraisable if u.exc_traceback is not None]  # raised within the callback
    assert [u.exc_type for u in from_inside] == []
