"""Token bucket (Meta throughput / pair rate) and leaky bucket (Bitrix24 REST limit)."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]


class TokenBucket:
    """`capacity` tokens, refilled at `rate` per second; a send takes one."""

    def __init__(self, rate: float, capacity: float, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self.capacity = max(capacity, 1.0)
        self._clock = clock
        self._tokens = self.capacity
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def try_take(self) -> bool:
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def take_if_any(self) -> None:
        """Consume without refusing (inbound traffic also counts toward Meta's throughput)."""
        self._refill()
        self._tokens = max(0.0, self._tokens - 1.0)


class LeakyBucket:
    """Bitrix24's documented limit: each request adds 1, the level drains at `drain` per second,
    and a request that would lift the level above `capacity` is refused (and adds nothing)."""

    def __init__(self, drain: float, capacity: float, clock: Clock = time.monotonic) -> None:
        self.drain = drain
        self.capacity = capacity
        self._clock = clock
        self.level = 0.0
        self._last = clock()

    def try_add(self) -> bool:
        now = self._clock()
        self.level = max(0.0, self.level - (now - self._last) * self.drain)
        self._last = now
        if self.level + 1.0 > self.capacity + 1e-9:
            return False
        self.level += 1.0
        return True


class PeakPerSecond:
    """Highest number of events seen within one wall-clock second."""

    def __init__(self, clock: Clock = time.time) -> None:
        self._clock = clock
        self._second = -1
        self._count = 0
        self.peak = 0

    def hit(self) -> None:
        second = int(self._clock())
        if second != self._second:
            self._second, self._count = second, 0
        self._count += 1
        self.peak = max(self.peak, self._count)
