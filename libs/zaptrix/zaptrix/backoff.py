"""Retry with backoff until a process is told to stop: how a process waits for Kafka or restarts its
consumer (0.5 s doubling up to 10 s; a stop ends the wait at once and gives up)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from zaptrix.logging import get_logger

log = get_logger(__name__)

FIRST_DELAY_S = 0.5
MAX_DELAY_S = 10.0


def until_stopped(
    stopped: asyncio.Event, message: str, *, traceback: bool = False, **context: Any
) -> AsyncRetrying:
    """Retries on any exception, logging ``message`` (a warning; with the traceback at error level when
    ``traceback``) before each wait. Once ``stopped`` is set it waits no more and returns None."""

    async def sleep_or_stop(delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopped.wait(), timeout=delay)

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


__all__ = ["until_stopped"]
