"""zaptrix_gc_pause_seconds: every collection of a process is timed, by generation."""

from __future__ import annotations

import gc

from prometheus_client import REGISTRY
from zaptrix.gcpauses import watch_gc_pauses


def _count(generation: str) -> float:
    value = REGISTRY.get_sample_value("zaptrix_gc_pause_seconds_count", {"generation": generation})
    return value or 0.0


def test_a_full_collection_is_timed_under_generation_2() -> None:
    watch_gc_pauses()
    watch_gc_pauses()  # a second call adds no second callback
    before = _count("2")
    gc.collect()
    assert _count("2") == before + 1
    seconds = REGISTRY.get_sample_value("zaptrix_gc_pause_seconds_sum", {"generation": "2"})
    assert seconds is not None and seconds > 0


def test_a_young_collection_is_timed_under_generation_0() -> None:
    watch_gc_pauses()
    before = _count("0")
    gc.collect(0)
    assert _count("0") == before + 1
