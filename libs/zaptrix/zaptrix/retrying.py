"""Retry until it works or the process stops: capped exponential backoff (tenacity) for the start-up and
publish loops that must not give up while a dependency (Kafka, PostgreSQL) is down."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential


async def retry_until_stopped(
    attempt: Callable[[], Awaitable[object]],
    *,
    retry_on: Callable[[BaseException], bool],
    stopped: asyncio.Event | None = None,
    first_s: float = 0.5,
    max_s: float = 10.0,
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> bool:
    """Await ``attempt()`` until it returns (True). After a failure that ``retry_on`` accepts: False once
    ``stopped`` is set, else ``on_retry(error, wait_s)``, a wait of ``first_s`` doubling up to ``max_s``
    (cut short when ``stopped`` is set) and another attempt. Any other failure propagates."""

    def is_stopped(_: RetryCallState) -> bool:
        return stopped is not None and stopped.is_set()

    async def sleep(seconds: float) -> None:
        if stopped is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopped.wait(), timeout=seconds)

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None and state.next_action is not None:
            error = state.outcome.exception()
            if error is not None:
                on_retry(error, state.next_action.sleep)

    retrying = AsyncRetrying(
        retry=retry_if_exception(retry_on),
        stop=is_stopped,
        wait=wait_exponential(multiplier=first_s, max=max_s),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )

    async def once() -> None:  # tenacity awaits only coroutine functions: a lambda's coroutine would not be
        await attempt()

    try:
        await retrying(once)
    except BaseException as exc:
        if stopped is not None and stopped.is_set() and retry_on(exc):
            return False
        raise
    return True
