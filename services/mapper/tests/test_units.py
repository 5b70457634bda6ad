"""Pure units: the cache, the external chat id rule, settings guards (no database)."""

from __future__ import annotations

import re

import pytest
from mapper.cache import TTLCache
from mapper.model import new_external_chat_id
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


def test_new_external_chat_ids_are_random_bitrix_safe_and_never_an_earlier_form() -> None:
    ids = {new_external_chat_id() for _ in range(1000)}
    assert len(ids) == 1000
    for chat in ids:
        assert re.fullmatch(r"wa_[0-9a-f]{32}", chat), chat
        # the derived forms were wa_<phone_number_id>_<wa_id> and wa_x_<hex>: always a second underscore
        assert chat.count("_") == 1


def test_the_dedupe_cache_must_not_outlive_the_records() -> None:
    with pytest.raises(ValidationError):
        MapperSettings(dedupe_retention_hours=1, dedupe_cache_ttl_s=3600)
    assert MapperSettings().dedupe_retention_hours * 3600 > MapperSettings().dedupe_cache_ttl_s
