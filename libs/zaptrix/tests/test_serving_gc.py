"""A web process tunes the garbage collector once it serves (zaptrix.process.tune_gc_for_serving)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from zaptrix.process import WEB_GC_GEN0_THRESHOLD, tune_gc_for_serving


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_the_startup_heap_is_frozen_and_the_young_generation_collected_less_often(restored_gc: None) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    older = gc.get_threshold()[1:]

    tune_gc_for_serving()

    assert gc.get_freeze_count() > 0  # what existed at startup is out of the collector's reach
    assert gc.get_threshold() == (WEB_GC_GEN0_THRESHOLD, *older)
    assert gc.isenabled()  # cycles made while serving are still collected automatically
