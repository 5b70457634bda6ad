"""A small async TTL cache with single-flight loading, negative caching and stale-on-error.

At thousands of webhooks per second the credentials of a channel must not cost a gRPC call each: one
loader call per key per TTL, concurrent callers share it, a key known to be missing is remembered
briefly, and when the loader fails (token-keeper down) an expired value is still served for a bounded
time rather than failing every webhook.

Keys known to be missing live in their own, smaller bounded map: a flood of random keys (unauthenticated
webhooks naming random phone_number_ids) evicts only other missing keys, never a real channel's entry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from prometheus_client import Counter
from zaptrix.logging import get_logger

K = TypeVar("K")
V = TypeVar("V")
log = get_logger(__name__)


class NotFoundError(LookupError):
    """The loader says the key does not exist (cached for negative_ttl_s)."""


@dataclass
class _Entry(Generic[V]):
    value: V | None
    missing: NotFoundError | None
    at: float


class AsyncTtlCache(Generic[K, V]):
    def __init__(
        self,
        loader: Callable[[K], Awaitable[V]],
        *,
        ttl_s: float,
        negative_ttl_s: float,
        stale_max_s: float,
        counter: Counter | None = None,
        name: str = "cache",
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 100_000,
        negative_max_entries: int = 10_000,
    ) -> None:
        self._loader = loader
        self.ttl_s = ttl_s
        self.negative_ttl_s = negative_ttl_s
        self.stale_max_s = stale_max_s
        self._counter = counter
        self._name = name
        self._clock = clock
        self._max_entries = max_entries
        self._negative_max_entries = negative_max_entries
        self._entries: dict[K, _Entry[V]] = {}  # loaded values only
        self._missing: dict[K, _Entry[V]] = {}  # keys the loader said do not exist
        self._inflight: dict[K, asyncio.Task[V]] = {}
        self._children: dict[str, Any] = {}

    def _count(self, result: str) -> None:
        if self._counter is not None:
            child = self._children.get(result)
            if child is None:  # .labels() takes a lock and builds a key: once per result, not per call
                child = self._children[result] = self._counter.labels(result)
            child.inc()

    def peek(self, key: K) -> V | None:
        entry = self._entries.get(key)
        return entry.value if entry is not None else None

    def values(self) -> list[V]:
        return [e.value for e in self._entries.values() if e.value is not None]

    def invalidate(self, key: K) -> None:
        self._entries.pop(key, None)
        self._missing.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()
        self._missing.clear()

    async def get(self, key: K) -> V:
        now = self._clock()
        missing = self._missing.get(key)
        if missing is not None and missing.missing is not None:
            if now - missing.at < self.negative_ttl_s:
                self._count("negative")
                raise missing.missing
            del self._missing[key]
        entry = self._entries.get(key)
        if entry is not None:
            if entry.value is not None and now - entry.at < self.ttl_s:
                self._count("hit")
                return entry.value
        task = self._inflight.get(key)
        if task is None:
            self._count("miss")
            task = asyncio.ensure_future(self._load(key))
            self._inflight[key] = task
            task.add_done_callback(lambda t, k=key: self._done(k, t))  # type: ignore[misc]
        try:
            return await asyncio.shield(task)
        except NotFoundError:
            raise
        except Exception:
            stale = self._entries.get(key)
            if stale is not None and stale.value is not None and self._clock() - stale.at < self.stale_max_s:
                self._count("stale")
                log.warning("serving a stale cache entry: the loader failed", cache=self._name)
                return stale.value
            self._count("error")
            raise

    async def _load(self, key: K) -> V:
        try:
            value = await self._loader(key)
        except NotFoundError as exc:
            self._entries.pop(key, None)  # deleted upstream: no stale serving of a removed key
            if self.negative_ttl_s > 0:
                self._store(self._missing, self._negative_max_entries, key, _Entry(None, exc, self._clock()))
            raise
        self._missing.pop(key, None)
        self._store(self._entries, self._max_entries, key, _Entry(value, None, self._clock()))
        return value

    @staticmethod
    def _store(entries: dict[K, _Entry[V]], limit: int, key: K, entry: _Entry[V]) -> None:
        if len(entries) >= limit and key not in entries:
            entries.pop(next(iter(entries)))  # oldest insertion first
        entries[key] = entry

    def _done(self, key: K, task: asyncio.Task[V]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" noise when nobody waits
