"""Polling for a condition that becomes true asynchronously (no sleeps of a guessed length in tests)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def eventually(
    check: Callable[[], T | Awaitable[T]],
    timeout_s: float = 10.0,
    what: str = "",
    *,
    interval_s: float = 0.05,
) -> T:
    """Calls `check` (plain or async) until it returns something truthy and returns that; raises
    AssertionError naming `what` and the last value after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or check} (last: {last!r})")
        await asyncio.sleep(interval_s)
