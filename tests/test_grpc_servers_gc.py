"""mapper and token-keeper serve with the collector tuned as the web and dispatcher processes: the startup
heap frozen, the young generation at WEB_GC_GEN0_THRESHOLD. Before, each full collection of the mapper
walked its whole startup heap: 30-44 ms pauses every 10-20 s under load (bench scaling,
zaptrix_gc_pause_seconds)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
from zaptrix.process import WEB_GC_GEN0_THRESHOLD


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def _state_when_serving(module: Any, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    seen: list[tuple[int, int]] = []
    monkeypatch.setattr(module, "run_process", lambda _service, _level, body, *_: body())

    def serving(coro: Any) -> None:
        coro.close()  # not run: only the collector's state when serving would start
        seen.append((gc.get_freeze_count(), gc.get_threshold()[0]))

    monkeypatch.setattr(module.asyncio, "run", serving)
    module.main()
    return seen


def test_the_mapper_serves_with_the_collector_tuned(
    restored_gc: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mapper import server

    ((frozen, gen0),) = _state_when_serving(server, monkeypatch)
    assert frozen > 0 and gen0 == WEB_GC_GEN0_THRESHOLD


def test_token_keeper_serves_with_the_collector_tuned(
    restored_gc: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from token_keeper import server

    monkeypatch.setattr(server, "load_keyring", lambda _settings: None)
    ((frozen, gen0),) = _state_when_serving(server, monkeypatch)
    assert frozen > 0 and gen0 == WEB_GC_GEN0_THRESHOLD
