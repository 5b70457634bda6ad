"""The one in-process cache: LRU bound, expiry, the generation guard, and the async read-through policy
(single flight, negative entries in their own bound, bounded stale-on-error)."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, Counter
from zaptrix.ttlcache import AsyncTtlCache, NotFoundError, TtlCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_after_the_ttl() -> None:
    clock = Clock()
    cache: TtlCache[str, int] = TtlCache(10, ttl_s=5, clock=clock)
    cache.put("a", 1)
    clock.now += 4.9
    assert cache.get("a") == 1
    clock.now += 0.1
    assert cache.get("a") is None
    assert len(cache) == 0


def test_a_per_entry_ttl_overrides_the_default() -> None:
    clock = Clock()
    cache: TtlCache[str, int] = TtlCache(10, ttl_s=60, clock=clock)
    cache.put("short", 1, 5.0)
    cache.put("long", 2)
    clock.now += 10
    assert (cache.get("short"), cache.get("long")) == (None, 2)


def test_the_least_recently_used_goes_first() -> None:
    cache: TtlCache[str, int] = TtlCache(2, ttl_s=60)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)


def test_a_full_cache_keeps_its_other_entries() -> None:
    """bitrix channels' old cache cleared everything when full; one put now evicts one entry."""
    cache: TtlCache[int, int] = TtlCache(100, ttl_s=60)
    for i in range(150):
        cache.put(i, i)
    assert len(cache) == 100
    assert cache.get(149) == 149 and cache.get(50) == 50 and cache.get(49) is None


def test_a_put_after_a_concurrent_invalidate_is_dropped() -> None:
    cache: TtlCache[str, int] = TtlCache(10, ttl_s=60)
    generation = cache.generation()  # a reader goes to the database ...
    cache.invalidate("a")  # ... a write in this process happens meanwhile ...
    cache.put("a", 1, generation=generation)  # ... so what the reader saw may be stale
    assert cache.get("a") is None
    cache.put("a", 2, generation=cache.generation())
    assert cache.get("a") == 2


def test_a_zero_sized_cache_stores_nothing() -> None:
    cache: TtlCache[str, int] = TtlCache(0, ttl_s=60)
    cache.put("a", 1)
    assert cache.get("a") is None


def test_hits_and_misses_are_counted_under_the_given_labels() -> None:
    registry = CollectorRegistry()
    lookups = Counter("lookups", "test", ["cache", "result"], registry=registry)
    cache: TtlCache[str, int] = TtlCache(10, ttl_s=60, counter=lookups, labels=("channel",))
    cache.put("a", 1)
    cache.get("a")
    cache.get("b")
    cache.get("b")
    assert registry.get_sample_value("lookups_total", {"cache": "channel", "result": "hit"}) == 1
    assert registry.get_sample_value("lookups_total", {"cache": "channel", "result": "miss"}) == 2


def test_stale_entries_are_answered_only_within_their_bound() -> None:
    clock = Clock()
    cache: TtlCache[str, int] = TtlCache(10, ttl_s=5, keep_s=50, clock=clock)
    cache.put("a", 1)
    clock.now += 20
    assert cache.get("a") is None  # expired for readers ...
    assert cache.get_stale("a", 30) == 1  # ... but still there for a caller whose source is down
    assert cache.get_stale("a", 10) is None
    clock.now += 40
    assert cache.get_stale("a", 100) is None  # never beyond keep_s


async def test_async_single_flight_negative_and_stale() -> None:
    calls: list[str] = []
    mode = {"fail": False}

    async def load(key: str) -> str:
        calls.append(key)
        await asyncio.sleep(0.01)
        if key == "missing":
            raise NotFoundError(key)
        if mode["fail"]:
            raise RuntimeError("token-keeper down")
        return f"value-{key}"

    clock = Clock()
    cache: AsyncTtlCache[str, str] = AsyncTtlCache(
        load, ttl_s=10, negative_ttl_s=5, stale_max_s=100, clock=clock
    )
    values = await asyncio.gather(*(cache.get("a") for _ in range(50)))
    assert set(values) == {"value-a"} and calls == ["a"]  # one load for 50 concurrent callers
    with pytest.raises(NotFoundError):
        await cache.get("missing")
    with pytest.raises(NotFoundError):
        await cache.get("missing")
    assert calls.count("missing") == 1  # remembered as missing
    clock.now += 6
    with pytest.raises(NotFoundError):
        await cache.get("missing")
    assert calls.count("missing") == 2  # forgotten after negative_ttl_s
    clock.now += 5
    mode["fail"] = True
    assert await cache.get("a") == "value-a"  # stale while the loader fails
    clock.now += 200
    with pytest.raises(RuntimeError):
        await cache.get("a")  # too stale
    mode["fail"] = False
    assert await cache.get("a") == "value-a"
    cache.invalidate("a")
    await cache.get("a")
    assert calls.count("a") == 5  # first load, two failed reloads, one good reload, one after invalidate


async def test_a_key_deleted_upstream_is_never_served_stale() -> None:
    gone = {"a": False}

    async def load(key: str) -> str:
        if gone[key]:
            raise NotFoundError(key)
        return "value"

    clock = Clock()
    cache: AsyncTtlCache[str, str] = AsyncTtlCache(
        load, ttl_s=10, negative_ttl_s=5, stale_max_s=100, clock=clock
    )
    assert await cache.get("a") == "value"
    gone["a"] = True
    clock.now += 11
    with pytest.raises(NotFoundError):
        await cache.get("a")
    clock.now += 6
    with pytest.raises(NotFoundError):
        await cache.get("a")


async def test_random_missing_keys_never_evict_real_entries() -> None:
    """H4: a flood of unknown phone_number_ids fills only the bounded negative map."""
    calls: list[str] = []

    async def load(key: str) -> str:
        calls.append(key)
        if key.startswith("random"):
            raise NotFoundError(key)
        return f"value-{key}"

    cache: AsyncTtlCache[str, str] = AsyncTtlCache(
        load, ttl_s=60, negative_ttl_s=60, stale_max_s=100, max_entries=10, negative_max_entries=100
    )
    for key in ("a", "b"):
        await cache.get(key)
    for i in range(5_000):
        with pytest.raises(NotFoundError):
            await cache.get(f"random-{i}")
    assert await cache.get("a") == "value-a" and await cache.get("b") == "value-b"
    assert calls.count("a") == 1 and calls.count("b") == 1  # still cached, not reloaded
    with pytest.raises(NotFoundError):
        await cache.get("random-4999")  # the newest missing keys are remembered
    assert calls.count("random-4999") == 1
    assert len(cache._missing) <= 100


async def test_cached_answers_a_fresh_entry_without_a_load_and_counts_the_hit() -> None:
    clock = Clock()
    registry = CollectorRegistry()
    counter = Counter("t_cached", "t", ["result"], registry=registry)
    loads: list[str] = []

    async def loader(key: str) -> int:
        loads.append(key)
        if key == "gone":
            raise NotFoundError(key)
        return 7

    cache: AsyncTtlCache[str, int] = AsyncTtlCache(
        loader, ttl_s=5, negative_ttl_s=60, stale_max_s=60, counter=counter, clock=clock
    )
    assert cache.cached("a") is None  # nothing yet: get() decides (and loads)
    assert await cache.get("a") == 7
    assert cache.cached("a") == 7
    assert registry.get_sample_value("t_cached_total", {"result": "hit"}) == 1
    with pytest.raises(NotFoundError):
        await cache.get("gone")
    assert cache.cached("gone") is None  # a negative entry is never an answer here
    clock.now += 5
    assert cache.cached("a") is None  # expired: get() reloads (or serves it stale on an error)
    assert loads == ["a", "gone"]
