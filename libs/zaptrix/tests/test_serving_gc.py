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


def test_a_dispatcher_runs_with_the_collector_tuned(
    restored_gc: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dispatcher_main tunes the collector before its loop runs (a drain's batches, not the startup heap)."""
    from zaptrix import dispatcher_process

    gc.unfreeze()
    seen: list[tuple[int, int]] = []
    monkeypatch.setattr(dispatcher_process, "run_process", lambda _s, _l, body, _a=None: body())
    monkeypatch.setattr(
        dispatcher_process,
        "run_async",
        lambda _main: seen.append((gc.get_freeze_count(), gc.get_threshold()[0])),
    )

    dispatcher_process.dispatcher_main("test-dispatcher", "INFO", 0, lambda _kafka: None)  # type: ignore[arg-type,return-value]

    assert len(seen) == 1
    frozen, gen0 = seen[0]
    assert frozen > 0 and gen0 == WEB_GC_GEN0_THRESHOLD
