"""Outbound pacing: Meta's per-number throughput (130429) and per-customer pair rate (131056).

Throughput: one leaky bucket (aiolimiter) per phone number at the configured messages/s, with a small
burst (``throughput_burst_s`` of traffic) so that our sends never outrun Meta's own bucket even when
network jitter bunches them up on arrival.

Pair rate: a GCRA schedule per (phone number, customer). The consumer handles a whole poll batch before
it polls again, so a send may not sleep long in process: a wait up to ``pair_inline_wait_max_s`` is slept,
a longer one reserves the customer's next free slot and returns the time to it, and the caller sends the
event through the retry topic with that delay. Reserved slots keep one customer's messages in order:
a later event never takes the slot of an earlier deferred one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

from meta_ingress.metrics import PACING_WAIT

Clock = Callable[[], float]


class ChannelThrottle:
    """Per phone number: ``rate`` messages/s, a burst of ``rate * burst_s`` (at least 1)."""

    def __init__(self, default_mps: float, overrides: dict[str, float], burst_s: float) -> None:
        self.default_mps = default_mps
        self.overrides = dict(overrides)
        self.burst_s = burst_s
        self._limiters: dict[str, AsyncLimiter] = {}
        self._paused_until: dict[str, float] = {}

    def rate(self, phone_number_id: str) -> float:
        return self.overrides.get(phone_number_id, self.default_mps)

    def _limiter(self, phone_number_id: str) -> AsyncLimiter:
        limiter = self._limiters.get(phone_number_id)
        if limiter is None:
            rate = self.rate(phone_number_id)
            capacity = max(1.0, rate * self.burst_s)
            limiter = AsyncLimiter(capacity, capacity / rate)
            self._limiters[phone_number_id] = limiter
        return limiter

    def pause(self, phone_number_id: str, seconds: float) -> None:
        """Meta said 130429: nobody sends from this number for a while."""
        until = time.monotonic() + seconds
        self._paused_until[phone_number_id] = max(until, self._paused_until.get(phone_number_id, 0.0))

    async def acquire(self, phone_number_id: str) -> float:
        started = time.monotonic()
        paused = self._paused_until.get(phone_number_id, 0.0) - started
        if paused > 0:
            await asyncio.sleep(paused)
        await self._limiter(phone_number_id).acquire()
        waited = time.monotonic() - started
        PACING_WAIT.labels("throughput").observe(waited)
        return waited


PairKey = tuple[str, str]


@dataclass
class _Reservation:
    key: PairKey
    slot: float


@dataclass
class PairSnapshot:
    key: PairKey
    event_id: str
    tat: float | None
    planned: float | None
    reservation: _Reservation | None


class PairPacer:
    """GCRA per (phone_number_id, wa_id): interval T = 1/rate + margin, burst ``burst`` messages.

    ``_tat`` is the theoretical arrival time of the next conforming send, advanced only by real sends
    (so it is the truth about what Meta has seen from this process); ``_planned`` also counts slots
    reserved by deferred events, which a new event must queue behind.
    """

    def __init__(self, rate_per_s: float, burst: int, margin_s: float, clock: Clock = time.monotonic) -> None:
        self.interval = 1.0 / rate_per_s + margin_s
        self.tolerance = (burst - 1) * self.interval
        self._clock = clock
        self._tat: dict[PairKey, float] = {}
        self._planned: dict[PairKey, float] = {}
        self._reservations: dict[str, _Reservation] = {}
        self._ops = 0

    def wait_s(self, key: PairKey, event_id: str) -> float:
        """Seconds until ``event_id`` may send to this customer (0: now)."""
        now = self._clock()
        earliest = self._tat.get(key, now) - self.tolerance
        reservation = self._reservations.get(event_id)
        if reservation is not None and reservation.key == key:
            earliest = max(earliest, reservation.slot)
        else:
            earliest = max(earliest, self._planned.get(key, now) - self.tolerance)
        return max(0.0, earliest - now)

    def commit(self, key: PairKey, event_id: str) -> PairSnapshot:
        """A message to this customer is being sent now. Returns what restore() needs to undo it."""
        now = self._clock()
        snapshot = PairSnapshot(key, event_id, self._tat.get(key), self._planned.get(key), None)
        self._tat[key] = max(self._tat.get(key, now), now) + self.interval
        snapshot.reservation = self._reservations.pop(event_id, None)
        if snapshot.reservation is None:
            # An event without reservation sends only when no reservation is ahead of it: keep _planned
            # at least where the real schedule is.
            self._planned[key] = max(self._planned.get(key, 0.0), self._tat[key])
        self._ops += 1
        if self._ops % 1024 == 0:
            self.sweep()
        return snapshot

    def restore(self, snapshot: PairSnapshot) -> None:
        """The send did not happen (connection refused, 5xx, 130429): give the slot back."""
        for table, value in ((self._tat, snapshot.tat), (self._planned, snapshot.planned)):
            if value is None:
                table.pop(snapshot.key, None)
            else:
                table[snapshot.key] = value
        if snapshot.reservation is not None:
            self._reservations[snapshot.event_id] = snapshot.reservation

    def defer(self, key: PairKey, event_id: str) -> float:
        """Reserve the customer's next free slot for ``event_id``; returns the seconds until it."""
        now = self._clock()
        existing = self._reservations.get(event_id)
        if existing is not None and existing.key == key and existing.slot > now:
            slot = max(existing.slot, self._tat.get(key, now) - self.tolerance)
        else:
            base = max(self._tat.get(key, now), self._planned.get(key, now))
            slot = max(now, base - self.tolerance)
            self._planned[key] = max(base, slot) + self.interval
        self._reservations[event_id] = _Reservation(key, slot)
        return slot - now

    def penalize(self, key: PairKey) -> None:
        """Meta said 131056: nothing more to this customer for a full interval (and no burst)."""
        now = self._clock()
        self._tat[key] = max(self._tat.get(key, now), now + self.interval + self.tolerance)

    def sweep(self, abandoned_after_s: float = 900.0) -> None:
        """Forget customers whose schedule is in the past, and reservations nobody came back for."""
        now = self._clock()
        for key in [k for k, tat in self._tat.items() if tat < now]:
            del self._tat[key]
        for key in [k for k, tat in self._planned.items() if tat < now]:
            del self._planned[key]
        for event_id in [e for e, r in self._reservations.items() if r.slot < now - abandoned_after_s]:
            del self._reservations[event_id]
