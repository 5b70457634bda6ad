"""Per-portal pacing of REST requests, mirroring Bitrix24's own leaky bucket.

Bitrix24 counts requests per portal (and source IP) in a leaky bucket: each request adds one, the
level drains at 2/s (Enterprise 5/s), and above 50 (Enterprise 250) requests get
``QUERY_LIMIT_EXCEEDED``. Our pacer is the same shape with a smaller bucket (default 2/s, burst
10): whatever the load, a portal never sees more than `burst` requests at once nor more than `rate`
per second sustained from this process. When Bitrix24 still answers QUERY_LIMIT_EXCEEDED (another
app on the same egress IP, another replica), the portal is paused with exponential backoff and
jitter, honouring Retry-After (bounded: zaptrix.delays), and requests resume at the sustained rate.

Background requests (the coexistence history import) yield to live traffic: they go only while no live
request of the portal waits and at least half of the bucket is free, so an import never queues in front
of a customer's message (docs/bitrix-ingress.md, "History import").

Pacers exist only for portals token-keeper knows (PortalClient asks for the token first); the install
path, where the member_id is not verified yet, can still name any portal, so the registry is a bounded LRU.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict
from collections.abc import Callable

from aiolimiter import AsyncLimiter
from prometheus_client import Counter, Histogram
from zaptrix.delays import clamp_delay

from bitrix_ingress.settings import RateSpec

PACER_WAIT = Histogram(
    "zaptrix_bitrix_pacer_wait_seconds",
    "Time a REST request waited for its portal's pacer",
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
RATE_LIMITED = Counter(
    "zaptrix_bitrix_rate_limited_total", "QUERY_LIMIT_EXCEEDED answers (each pauses the portal)"
)


class PortalPacer:
    def __init__(
        self,
        spec: RateSpec,
        clock: Callable[[], float] = time.monotonic,
        *,
        pause_base_s: float = 1.0,
        pause_max_s: float = 30.0,
    ) -> None:
        self.spec = spec
        self._clock = clock
        self.pause_base_s = pause_base_s
        self.pause_max_s = pause_max_s
        self._limiter = AsyncLimiter(spec.burst, spec.burst / spec.rate)
        self.paused_until = 0.0
        self.penalties = 0
        self._live_waiting = 0  # live (not background) requests waiting for this pacer

    async def acquire(self, *, background: bool = False) -> None:
        started = self._clock()
        if background:
            await self._yield_to_live()
        else:
            self._live_waiting += 1
        try:
            while True:
                wait = self.paused_until - self._clock()
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            await self._limiter.acquire()
        finally:
            if not background:
                self._live_waiting -= 1
        PACER_WAIT.observe(self._clock() - started)

    async def room(self, *, background: bool = False) -> None:
        """Wait until a request could take the bucket now, without taking it (it counts as waiting live
        traffic meanwhile): the dispatcher packs what is pending for the portal at that moment
        (dispatcher/portal_calls.py), so what arrives during the wait rides in the same request."""
        if background:
            await self._yield_to_live()
            return
        self._live_waiting += 1
        try:
            # Polled: aiolimiter tells whether there is room, not when; a step of a tenth of a pacing
            # interval (50 ms at 2/s) costs a few wake-ups per waiting portal and little latency.
            while (  # noqa: ASYNC110
                wait := self.paused_until - self._clock()
            ) > 0 or not self._limiter.has_capacity():
                await asyncio.sleep(wait if wait > 0 else 0.1 / self.spec.rate)
        finally:
            self._live_waiting -= 1

    async def _yield_to_live(self) -> None:
        """Wait until no live request waits, the portal is not paused and half the bucket is free."""
        reserve = self.spec.burst // 2
        # Polled: the bucket drains with time, and live requests come and go; nothing to wait on.
        while (  # noqa: ASYNC110
            self._live_waiting
            or self.paused_until > self._clock()
            or not self._limiter.has_capacity(1 + reserve)
        ):
            await asyncio.sleep(1 / self.spec.rate)

    def slow_down(self, retry_after: float | None = None) -> float:
        """Pause the portal after QUERY_LIMIT_EXCEEDED; returns the pause in seconds."""
        RATE_LIMITED.inc()
        self.penalties += 1
        ceiling = min(self.pause_max_s, self.pause_base_s * 2 ** min(self.penalties, 5))  # 2, 4, 8, 16, 30 s
        delay = max(clamp_delay(retry_after) or 0.0, random.uniform(ceiling / 2, ceiling))
        self.paused_until = max(self.paused_until, self._clock() + delay)
        return delay

    def paused_for(self) -> float:
        """Seconds until the portal's pause is over (0 when not paused)."""
        return max(0.0, self.paused_until - self._clock())

    def succeeded(self) -> None:
        self.penalties = 0


class PacerRegistry:
    """One pacer per portal (member_id), created on first use with the portal's rate; at most ``max_size``
    (least recently used first out), so names nobody verified cannot grow it without bound."""

    def __init__(self, rate_for: Callable[[str], RateSpec], max_size: int = 10_000) -> None:
        self._rate_for = rate_for
        self.max_size = max_size
        self._pacers: OrderedDict[str, PortalPacer] = OrderedDict()

    def get(self, member_id: str) -> PortalPacer:
        pacer = self._pacers.get(member_id)
        if pacer is None:
            pacer = self._pacers[member_id] = PortalPacer(self._rate_for(member_id))
            while len(self._pacers) > self.max_size:
                self._pacers.popitem(last=False)
        else:
            self._pacers.move_to_end(member_id)
        return pacer

    def peek(self, member_id: str) -> PortalPacer | None:
        """The portal's pacer if it has one (creates none)."""
        return self._pacers.get(member_id)

    def __len__(self) -> int:
        return len(self._pacers)
