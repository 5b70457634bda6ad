"""The ingress scenario's interleaved rounds folded into one row (not the scenario itself: it runs only
through dev/bench.sh): the verdict reads the median rate, the worst p99 and CPU over every request."""

from __future__ import annotations

from typing import Any

from bench.scenarios.ingress import _combined


def _round(rps: float, p50: float, p99: float, requests: int, cpu_s: float) -> dict[str, Any]:
    return {
        "label": "meta-ingress",
        "connections": 32,
        "rps": rps,
        "p50_ms": p50,
        "p99_ms": p99,
        "requests": requests,
        "non2xx": 0,
        "socket_errors": 0,
        "server_cpu_s": cpu_s,
        "server_cpu_pct": 97.0,
        "processes": [{"process": "meta-ingress"}],
    }


def test_rounds_fold_into_median_rate_worst_p99_and_cpu_over_all_requests() -> None:
    row = _combined(
        [
            _round(4000.0, 7.0, 11.0, 24_000, 5.0),
            _round(3000.0, 9.0, 19.5, 18_000, 5.4),
            _round(4500.0, 6.5, 10.0, 27_000, 5.6),
        ]
    )
    assert row["rps"] == 4000.0  # the median round, not the best and not the mean
    assert row["p50_ms"] == 7.0
    assert row["p99_ms"] == 19.5  # one slow round is not hidden by two fast ones
    assert row["requests"] == 69_000
    assert row["server_cpu_us_per_request"] == round(16.0 * 1e6 / 69_000, 1)
    assert len(row["rounds"]) == 3
    assert all("processes" not in r for r in row["rounds"])  # kept once, in the scenario's process rows
