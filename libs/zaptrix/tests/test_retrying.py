"""retry_until_stopped: capped doubling waits, other errors propagate, the stop event ends it."""

from __future__ import annotations

import asyncio

import pytest
from zaptrix import retrying
from zaptrix.retrying import retry_until_stopped


class Down(Exception):
    pass


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits asked for, without waiting."""
    asked: list[float] = []

    async def no_sleep(seconds: float) -> None:
        asked.append(seconds)

    monkeypatch.setattr(retrying.asyncio, "sleep", no_sleep)
    return asked


async def test_waits_double_up_to_the_cap_until_it_works(waits: list[float]) -> None:
    calls = 0
    retried: list[float] = []

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        if calls < 8:
            raise Down

    done = await retry_until_stopped(
        attempt,
        retry_on=lambda e: isinstance(e, Down),
        first_s=0.5,
        max_s=10.0,
        on_retry=lambda e, s: retried.append(s),
    )
    assert done and calls == 8
    assert waits == retried == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


async def test_other_errors_propagate_at_once(waits: list[float]) -> None:
    async def attempt() -> None:
        raise ValueError("not an outage")

    with pytest.raises(ValueError, match="not an outage"):
        await retry_until_stopped(attempt, retry_on=lambda e: isinstance(e, Down))
    assert waits == []


async def test_the_stop_event_cuts_the_wait_short_and_ends_the_retries() -> None:
    stopped = asyncio.Event()
    calls = 0

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        raise Down

    done = await retry_until_stopped(
        attempt,
        retry_on=lambda e: isinstance(e, Down),
        stopped=stopped,
        first_s=3600,
        max_s=3600,
        on_retry=lambda e, s: stopped.set(),  # asked to stop during the (hour-long) first wait
    )
    assert not done and calls == 2  # one more attempt after the wake, as the old loops did; then False


async def test_an_attempt_may_be_any_callable_returning_an_awaitable(waits: list[float]) -> None:
    calls = 0

    async def publish(topic: str) -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise Down(topic)

    assert await retry_until_stopped(lambda: publish("t"), retry_on=lambda e: isinstance(e, Down))
    assert calls == 3 and waits == [0.5, 1.0]
