"""Bitrix24's per-method operating-time limit (bitrix24.md §6): execution time per app and method, summed
over ten baskets of a sliding window (ten minutes by default); over the limit that method is blocked."""

from __future__ import annotations

import math
import time
from collections import defaultdict

from .ratelimit import Clock

BASKETS = 10


class OperatingTime:
    """Seconds of execution per (app, method), in BASKETS baskets of `window_s / BASKETS` seconds each."""

    def __init__(self, window_s: float, clock: Clock = time.time) -> None:
        self.window_s = window_s
        self.basket_s = window_s / BASKETS
        self._clock = clock
        self._used: defaultdict[tuple[str, str], dict[int, float]] = defaultdict(dict)

    def _live(self, key: tuple[str, str]) -> dict[int, float]:
        """The key's baskets still inside the window (older ones are dropped)."""
        current = math.floor(self._clock() / self.basket_s)
        baskets = self._used[key]
        for index in [i for i in baskets if i <= current - BASKETS]:
            del baskets[index]
        return baskets

    def charge(self, app: str, method: str, seconds: float) -> None:
        baskets = self._live((app, method))
        index = math.floor(self._clock() / self.basket_s)
        baskets[index] = baskets.get(index, 0.0) + seconds

    def operating(self, app: str, method: str) -> float:
        return sum(self._live((app, method)).values())

    def reset_at(self, app: str, method: str) -> int:
        """Unix time at which the oldest counted time leaves the window (a full window ahead if none)."""
        baskets = self._live((app, method))
        oldest = min(baskets) if baskets else math.floor(self._clock() / self.basket_s)
        return math.ceil((oldest + BASKETS) * self.basket_s)
