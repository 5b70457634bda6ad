"""A small bounded LRU cache with a time-to-live, for the event loop of one process.

Not thread-safe by design: grpc.aio runs every handler on one asyncio loop, and nothing here awaits.

Race guard: a reader that missed, went to PostgreSQL and came back must not store a value that a
concurrent write in this process has made stale. Readers take ``generation()`` before their query and
pass it to ``put(..., generation=)``; every ``invalidate`` bumps the generation, so such a late put is
dropped (it only costs a future miss).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from prometheus_client import Gauge

from mapper.metrics import CACHE_LOOKUPS

K = TypeVar("K")
V = TypeVar("V")

CACHE_ENTRIES = Gauge("zaptrix_mapper_cache_entries", "Entries held by an in-process cache", ["cache"])


class TTLCache(Generic[K, V]):
    def __init__(
        self, name: str, maxsize: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self.maxsize = maxsize
        self.ttl_s = ttl_s
        self._clock = clock
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._generation = 0
        self._hits = CACHE_LOOKUPS.labels(name, "hit")
        self._misses = CACHE_LOOKUPS.labels(name, "miss")
        CACHE_ENTRIES.labels(name).set_function(lambda: len(self._data))

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: K) -> V | None:
        entry = self._data.get(key)
        if entry is not None:
            expires, value = entry
            if expires > self._clock():
                self._data.move_to_end(key)
                self._hits.inc()
                return value
            del self._data[key]
        self._misses.inc()
        return None

    def generation(self) -> int:
        return self._generation

    def put(self, key: K, value: V, *, generation: int | None = None) -> None:
        if self.maxsize <= 0 or (generation is not None and generation != self._generation):
            return
        self._data[key] = (self._clock() + self.ttl_s, value)
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def invalidate(self, key: K) -> None:
        self._generation += 1
        self._data.pop(key, None)

    def clear(self) -> None:
        self._generation += 1
        self._data.clear()
