"""Retry until it works or the process stops: capped exponential backoff (tenacity, 0.5 s doubling up to
10 s) for the start-up, restart and publish loops that must not give up while a dependency (Kafka,
PostgreSQL) is down. A stop ends the wait at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    retry_if_exception_type,
    wait_exponential,
)

from zaptrix.logging import get_logger

log = get_logger(__name__)

FIRST_DELAY_S = 0.5
MAX_DELAY_S = 10.0


async def _sleep_or_stop(stopped: asyncio.Event | None, seconds: float) -> None:
    if stopped is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopped.wait(), timeout=seconds)


async def retry_until_stopped(
    attempt: Callable[[], Awaitable[object]],
    *,
    retry_on: Callable[[BaseException], bool],
    stopped: asyncio.Event | None = None,
    first_s: float = FIRST_DELAY_S,
    max_s: float = MAX_DELAY_S,
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> bool:
    """Await ``attempt()`` until it returns (True). After a failure that ``retry_on`` accepts: False once
    ``stopped`` is set, else ``on_retry(error, wait_s)``, a wait of ``first_s`` doubling up to ``max_s``
    (cut short when ``stopped`` is set) and another attempt. Any other failure propagates."""

    def is_stopped(_: RetryCallState) -> bool:
        return stopped is not None and stopped.is_set()

    async def sleep(seconds: float) -> None:
        await _sleep_or_stop(stopped, seconds)

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


def until_stopped(
    stopped: asyncio.Event, message: str, *, traceback: bool = False, **context: Any
) -> AsyncRetrying:
    """Retries on any exception, logging ``message`` (a warning; with the traceback at error level when
    ``traceback``) before each wait. Once ``stopped`` is set it waits no more and returns None."""

    async def sleep_or_stop(delay: float) -> None:
        await _sleep_or_stop(stopped, delay)

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else None
        if traceback:
            log.error(message, error=repr(exc), retry_s=delay, exc_info=exc, **context)
        else:
            log.warning(message, error=repr(exc), retry_s=delay, **context)

    return AsyncRetrying(
        retry=retry_if_exception_type(Exception),
        stop=lambda _state: stopped.is_set(),
        wait=wait_exponential(multiplier=FIRST_DELAY_S, max=MAX_DELAY_S),
        sleep=sleep_or_stop,
        before_sleep=before_sleep,
        retry_error_callback=lambda _state: None,  # stopped while failing: give up quietly
    )
