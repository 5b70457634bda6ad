"""Per-message series a scenario keeps in its JSON details for the plots (bench/plots.py), compact:
send times relative to the first send, latencies in milliseconds."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def latency_series(points: Iterable[tuple[float, float]]) -> dict[str, Any]:
    """(send time, latency), both in seconds (send time as time.time()), as the details entry
    ``latency_series``: ``t0`` (epoch of the first send), ``send_s`` and ``latency_ms``, sorted by send
    time. Drawn as latency over time: a burst shows as a spike, a backlog as a ramp."""
    pts = sorted(points)
    t0 = pts[0][0] if pts else 0.0
    return {
        "t0": t0,
        "send_s": [round(t - t0, 4) for t, _ in pts],
        "latency_ms": [round(lat * 1000, 2) for _, lat in pts],
    }
