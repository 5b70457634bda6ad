"""Deadlines for many short awaits under one loop timer.

``asyncio.timeout_at`` arms and cancels a timer per use: ~6 µs under uvloop, paid by every webhook's publish
(docs/benchmarks.md, ingress). ``Deadlines.at`` only registers the task; one timer, armed while anything is
registered, looks every ``tick`` seconds for overdue tasks and cancels them, and the block raises
TimeoutError as asyncio.timeout_at would (a cancellation from elsewhere stays a CancelledError). A deadline
fires up to one tick late, so a tick far below the deadlines it serves (4 s for a webhook's publish).
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class _Watch:
    __slots__ = ("cancelling", "deadline", "expired", "owner", "task")

    def __init__(self, owner: Deadlines, deadline: float) -> None:
        self.owner = owner
        self.deadline = deadline
        self.expired = False
        self.task: asyncio.Task[object] | None = None
        self.cancelling = 0

    def __enter__(self) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Deadlines.at() must be used inside a task")
        self.task = task
        self.cancelling = task.cancelling()
        self.owner._watch(self)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.owner._watched.pop(id(self), None)
        if self.expired and exc_type is asyncio.CancelledError:
            assert self.task is not None
            if self.task.uncancel() <= self.cancelling:  # our cancel only: the deadline passed
                raise TimeoutError from exc


class Deadlines:
    """One per event loop user (e.g. a producer); ``with deadlines.at(loop_time): await ...``."""

    def __init__(self, tick_s: float = 0.05) -> None:
        self.tick_s = tick_s
        self._watched: dict[int, _Watch] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def at(self, deadline: float) -> _Watch:
        """A context manager: the block is cancelled (TimeoutError) once the loop's clock passes
        ``deadline``, at most one tick late."""
        return _Watch(self, deadline)

    def _watch(self, watch: _Watch) -> None:
        self._watched[id(watch)] = watch
        loop = asyncio.get_running_loop()
        if self._timer is None or self._loop is not loop:  # (a timer of a closed loop never fires)
            self._loop = loop
            self._timer = loop.call_later(self.tick_s, self._sweep)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            return
        self._timer = None
        now = loop.time()
        for key, watch in list(self._watched.items()):
            task = watch.task
            if task is None or task.get_loop() is not loop:  # left behind by a closed loop
                del self._watched[key]
            elif not watch.expired and watch.deadline <= now:
                watch.expired = True
                task.cancel()
        if self._watched:
            self._timer = loop.call_later(self.tick_s, self._sweep)


__all__ = ["Deadlines"]
