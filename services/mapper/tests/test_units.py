"""Pure units: the cache, the external chat id rule, settings guards (no database)."""

from __future__ import annotations

import pytest
from mapper.cache import TTLCache
from mapper.model import external_chat_id
from mapper.settings import MapperSettings
from pydantic import ValidationError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_cache_expires_entries_after_the_ttl() -> None:
    clock = Clock()
    cache: TTLCache[str, int] = TTLCache("t1", maxsize=10, ttl_s=5, clock=clock)
    cache.put("a", 1)
    clock.now = 4.9
    assert cache.get("a") == 1
    clock.now = 5.0
    assert cache.get("a") is None
    assert len(cache) == 0


def test_cache_evicts_the_least_recently_used() -> None:
    cache: TTLCache[str, int] = TTLCache("t2", maxsize=2, ttl_s=60)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)


def test_a_put_racing_an_invalidation_is_dropped() -> None:
    cache: TTLCache[str, int] = TTLCache("t3", maxsize=10, ttl_s=60)
    generation = cache.generation()  # a reader goes to the database ...
    cache.invalidate("a")  # ... a write in this process happens meanwhile ...
    cache.put("a", 1, generation=generation)  # ... so what the reader saw may be stale
    assert cache.get("a") is None
    cache.put("a", 2, generation=cache.generation())
    assert cache.get("a") == 2


def test_a_zero_sized_cache_stores_nothing() -> None:
    cache: TTLCache[str, int] = TTLCache("t4", maxsize=0, ttl_s=60)
    cache.put("a", 1)
    assert cache.get("a") is None


def test_external_chat_ids_are_stable_distinct_and_bitrix_safe() -> None:
    assert external_chat_id("106540352242922", "16505551234") == "wa_106540352242922_16505551234"
    odd = external_chat_id("106540352242922", "US.1349")
    assert odd == external_chat_id("106540352242922", "US.1349")
    assert odd.startswith("wa_x_") and odd.replace("_", "").isalnum()
    # no two (channel, customer) pairs share one id, whichever form they take
    pairs = [("1", "23"), ("12", "3"), ("1", "2_3"), ("1_2", "3"), ("1", "US.1349"), ("1", "US_1349")]
    assert len({external_chat_id(p, w) for p, w in pairs}) == len(pairs)


def test_the_dedupe_cache_must_not_outlive_the_records() -> None:
    with pytest.raises(ValidationError):
        MapperSettings(dedupe_retention_hours=1, dedupe_cache_ttl_s=3600)
    assert MapperSettings().dedupe_retention_hours * 3600 > MapperSettings().dedupe_cache_ttl_s
