"""The one in-process cache of the services: a bounded LRU map with per-entry expiry (:class:`TtlCache`)
and, on two of them, an async read-through cache (:class:`AsyncTtlCache`).

Neither is thread-safe, by design: every service runs its handlers on one asyncio loop, and the map
operations never await.

:class:`AsyncTtlCache` is for values that cost a call to another service on a hot path (channel
credentials on every webhook): one loader call per key per TTL, concurrent callers share it (single
flight), a key the loader says is missing is remembered briefly, and when the loader fails (the other
service is down) an expired value is still served for a bounded time rather than failing every request.
Missing keys live in their own, smaller bounded map: a flood of random keys (unauthenticated webhooks
naming random ids) evicts only other missing keys, never a real entry.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from prometheus_client import Counter

from zaptrix.logging import get_logger

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
log = get_logger(__name__)


class NotFoundError(LookupError):
    """The loader says the key does not exist (remembered for ``negative_ttl_s``)."""


class _Results:
    """Lookup counts by result label, the labelled children made once (``.labels()`` locks and builds a key)."""

    def __init__(self, counter: Counter | None, labels: tuple[str, ...]) -> None:
        self._counter = counter
        self._labels = labels
        self._children: dict[str, Any] = {}

    def __call__(self, result: str) -> None:
        if self._counter is not None:
            self._child(result).inc()

    def _child(self, result: str) -> Any:
        child = self._children.get(result)
        if child is None:
            child = self._children[result] = self._counter.labels(*self._labels, result)  # type: ignore[union-attr]
        return child

    def expose(self, *results: str) -> None:
        """Export these results at 0 before the first lookup."""
        if self._counter is not None:
            for result in results:
                self._child(result)


@dataclass(slots=True)
class _Entry(Generic[V]):
    value: V
    stored_at: float
    fresh_until: float


class TtlCache(Generic[K, V]):
    """A bounded map whose entries expire: the least recently used entry goes first when it is full.

    ``get`` answers only fresh entries (``ttl_s``, or the ``ttl_s`` given to ``put``). An expired entry is
    kept until it is ``keep_s`` old (default: until it expires) so that :meth:`get_stale` can still answer
    it. Values must not be None (None means "not cached").

    Race guard for read-through callers: a reader that missed, went to the source and came back must not
    store a value that a concurrent write in this process has made stale. Readers take ``generation()``
    before their query and pass it to ``put(..., generation=)``; every ``invalidate`` and ``clear`` bumps
    the generation, so such a late put is dropped (it only costs a future miss).
    """

    def __init__(
        self,
        max_entries: int,
        ttl_s: float,
        *,
        keep_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        counter: Counter | None = None,
        labels: tuple[str, ...] = (),
    ) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.keep_s = ttl_s if keep_s is None else max(keep_s, ttl_s)
        self._clock = clock
        self._data: OrderedDict[K, _Entry[V]] = OrderedDict()
        self._generation = 0
        self._count = _Results(counter, labels)  # hit/miss of get(), when a counter is given
        self._count.expose("hit", "miss")

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: K) -> V | None:
        entry = self._data.get(key)
        if entry is not None:
            now = self._clock()
            if now < entry.fresh_until:
                self._data.move_to_end(key)
                self._count("hit")
                return entry.value
            if now - entry.stored_at >= self.keep_s:
                del self._data[key]
        self._count("miss")
        return None

    def get_stale(self, key: K, max_age_s: float) -> V | None:
        """The entry, fresh or not, if it was stored less than ``max_age_s`` (and ``keep_s``) ago."""
        entry = self._data.get(key)
        if entry is None:
            return None
        age = self._clock() - entry.stored_at
        return entry.value if age < min(max_age_s, self.keep_s) else None

    def values(self) -> list[V]:
        """Every entry held, fresh or expired."""
        return [entry.value for entry in self._data.values()]

    def generation(self) -> int:
        return self._generation

    def put(self, key: K, value: V, ttl_s: float | None = None, *, generation: int | None = None) -> None:
        if self.max_entries <= 0 or (generation is not None and generation != self._generation):
            return
        now = self._clock()
        self._data[key] = _Entry(value, now, now + (self.ttl_s if ttl_s is None else ttl_s))
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def invalidate(self, key: K) -> None:
        self._generation += 1
        self._data.pop(key, None)

    def clear(self) -> None:
        self._generation += 1
        self._data.clear()


class AsyncTtlCache(Generic[K, V]):
    """Read-through cache over ``loader``: single flight, TTL, negative TTL, bounded stale-on-error.

    ``get`` raises what the loader raises: :class:`NotFoundError` (remembered for ``negative_ttl_s`` in a
    separate map of ``negative_max_entries``) or any other error, answered from an expired entry younger
    than ``stale_max_s`` when there is one. ``counter`` (labels: result) counts hit, miss, negative,
    stale and error.
    """

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
        self._name = name
        self._count = _Results(counter, ())
        self._entries: TtlCache[K, V] = TtlCache(max_entries, ttl_s, keep_s=stale_max_s, clock=clock)
        self._missing: TtlCache[K, NotFoundError] = TtlCache(
            negative_max_entries, negative_ttl_s, clock=clock
        )
        self._inflight: dict[K, asyncio.Task[V]] = {}

    def values(self) -> list[V]:
        return self._entries.values()

    def invalidate(self, key: K) -> None:
        self._entries.invalidate(key)
        self._missing.invalidate(key)

    def clear(self) -> None:
        self._entries.clear()
        self._missing.clear()

    def cached(self, key: K) -> V | None:
        """A fresh entry, counted as the hit it is, without the coroutine of ``get``; None: ask ``get``."""
        value = self._entries.get(key)  # never also in the negative map: each load clears the other
        if value is not None:
            self._count("hit")
        return value

    async def get(self, key: K) -> V:
        missing = self._missing.get(key)
        if missing is not None:
            self._count("negative")
            raise missing
        value = self._entries.get(key)
        if value is not None:
            self._count("hit")
            return value
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
            stale = self._entries.get_stale(key, self.stale_max_s)
            if stale is not None:
                self._count("stale")
                log.warning("serving a stale cache entry: the loader failed", cache=self._name)
                return stale
            self._count("error")
            raise

    async def _load(self, key: K) -> V:
        try:
            value = await self._loader(key)
        except NotFoundError as exc:
            self._entries.invalidate(key)  # deleted upstream: no stale serving of a removed key
            if self.negative_ttl_s > 0:
                self._missing.put(key, exc)
            raise
        self._missing.invalidate(key)
        self._entries.put(key, value)
        return value

    def _done(self, key: K, task: asyncio.Task[V]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" noise when nobody waits
