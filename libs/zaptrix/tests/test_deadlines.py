"""Deadlines.at behaves as asyncio.timeout_at (TimeoutError once the deadline passed, at most a tick late;
a cancellation from elsewhere stays a cancellation), for many tasks under one timer."""

from __future__ import annotations

import asyncio

import pytest
from zaptrix.deadlines import Deadlines


async def test_an_overdue_block_raises_timeout_error_about_on_time() -> None:
    deadlines = Deadlines(tick_s=0.02)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        with deadlines.at(started + 0.1):
            await asyncio.sleep(5)
    assert 0.1 <= loop.time() - started < 0.5
    assert not deadlines._watched


async def test_a_block_done_in_time_is_left_alone_and_the_timer_stops() -> None:
    deadlines = Deadlines(tick_s=0.01)
    loop = asyncio.get_running_loop()
    with deadlines.at(loop.time() + 0.05):
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # past the deadline: nothing may cancel this task now
    await asyncio.sleep(0.05)
    assert deadlines._timer is None and not deadlines._watched


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    deadlines = Deadlines(tick_s=0.01)
    loop = asyncio.get_running_loop()

    async def waiting() -> None:
        with deadlines.at(loop.time() + 10):
            await asyncio.sleep(5)

    task = asyncio.create_task(waiting())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not deadlines._watched


async def test_many_tasks_each_with_its_own_deadline() -> None:
    deadlines = Deadlines(tick_s=0.01)
    loop = asyncio.get_running_loop()
    now = loop.time()

    async def one(deadline_s: float, work_s: float) -> str:
        try:
            with deadlines.at(now + deadline_s):
                await asyncio.sleep(work_s)
        except TimeoutError:
            return "timeout"
        return "done"

    outcomes = await asyncio.gather(*(one(0.1, 0.02 if n % 2 else 1.0) for n in range(40)))
    assert outcomes == ["timeout" if n % 2 == 0 else "done" for n in range(40)]
    assert not deadlines._watched
