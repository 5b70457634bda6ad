"""zaptrix_gc_pause_seconds: how long each garbage collection stopped the process, by generation.

A full collection walks every tracked object that gc.freeze() did not set aside; a process whose heap grew
since its start pauses for tens of milliseconds, and every request or message in flight waits (the mapper
before it froze its startup heap: 27-44 ms every 10-20 s under load, bench `scaling`). The histogram lets
a p99 spike be matched with a pause, or ruled out.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import Histogram

GC_PAUSE = Histogram(
    "zaptrix_gc_pause_seconds",
    "Time the process stood still in a garbage collection, by generation (2 = full)",
    ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
# Children made here, not in the callback: labels() takes a lock and allocates, which a collection
# started inside another labels() call must not do.
_BY_GENERATION = [GC_PAUSE.labels(str(g)) for g in range(3)]
_started = 0.0


def _timed(phase: str, info: dict[str, Any]) -> None:
    global _started
    try:
        if phase == "start":
            _started = time.perf_counter()
        else:
            _BY_GENERATION[min(int(info.get("generation", 2)), 2)].observe(time.perf_counter() - _started)
    except RecursionError:
        # A collection can start in the deepest frames of a recursive parse of hostile input; an error
        # here would only be printed as "Exception ignored" (or fail a test), so that pause goes uncounted.
        pass


def watch_gc_pauses() -> None:
    """Time every collection of this process from now on (once per process)."""
    if _timed not in gc.callbacks:
        gc.callbacks.append(_timed)


__all__ = ["GC_PAUSE", "watch_gc_pauses"]
