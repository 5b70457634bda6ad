"""bench/dashboard_png.py: its PromQL subset gives Prometheus's answers on synthetic scrapes, and it draws every
panel of the dashboard from a recording (no system, no benchmark run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.dashboard_png import Query, Series, draw, load

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _series(name: str, labels: dict[str, str], points: list[tuple[float, float]]) -> Series:
    return {(name, frozenset(labels.items())): points}


def test_rate_sum_by_and_counter_resets() -> None:
    series = {
        **_series("x_total", {"pod": "a", "outcome": "ok"}, [(t, 10.0 * t) for t in range(11)]),
        # reset at t=5 (a restarted pod): grows 2/s throughout
        **_series(
            "x_total", {"pod": "b", "outcome": "ok"}, [(t, 2.0 * (t if t < 5 else t - 5)) for t in range(11)]
        ),
        **_series("x_total", {"pod": "b", "outcome": "503"}, [(t, 1.0 * t) for t in range(11)]),
    }
    total = Query('sum by (outcome) (rate(x_total{outcome=~"ok|503"}[10s]))', series).at(10)
    assert total == {
        frozenset({("outcome", "ok")}): pytest.approx(10 + 16 / 9),
        frozenset({("outcome", "503")}): 1.0,
    }
    only_ok = Query('sum(increase(x_total{outcome!="503", pod="a"}[10s]))', series).at(10)
    assert only_ok == {frozenset(): pytest.approx(100.0)}


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    # 100 observations per second: 50 under 0.1 s, 40 between 0.1 and 0.5 s, 10 between 0.5 s and 1 s
    buckets = {"0.1": 50.0, "0.5": 90.0, "1.0": 100.0, "+Inf": 100.0}
    series: Series = {}
    for le, per_s in buckets.items():
        series |= _series("h_bucket", {"le": le, "route": "/w"}, [(t, per_s * t) for t in range(11)])
    p50 = Query("histogram_quantile(0.5, sum by (le, route) (rate(h_bucket[10s])))", series).at(10)
    p99 = Query("histogram_quantile(0.99, sum by (le, route) (rate(h_bucket[10s])))", series).at(10)
    assert p50 == {frozenset({("route", "/w")}): pytest.approx(0.1)}
    assert p99 == {frozenset({("route", "/w")}): pytest.approx(0.95)}


def test_gauges_max_then_sum() -> None:
    series = {
        **_series("lag", {"pod": "a", "topic": "t", "partition": "0"}, [(0, 5.0), (1, 7.0)]),
        **_series("lag", {"pod": "b", "topic": "t", "partition": "0"}, [(1, 6.0)]),
        **_series("lag", {"pod": "b", "topic": "t", "partition": "1"}, [(1, 3.0)]),
    }
    assert Query("sum by (topic) (max by (topic, partition) (lag))", series).at(1) == {
        frozenset({("topic", "t")}): 10.0
    }


def test_unsupported_promql_is_refused() -> None:
    with pytest.raises(ValueError):
        Query("sum(rate(x[5m])) / sum(rate(y[5m]))", {})


def test_every_panel_is_drawn_from_a_recording(tmp_path: Path) -> None:
    lines = [
        {
            "t": 1000.0 + t,
            "pod": "meta-ingress",
            "samples": [
                ["zaptrix_meta_inbound_messages_total", {"type": "text"}, 5.0 * t],
                ["zaptrix_http_request_seconds_bucket", {"route": "/webhooks/meta", "method": "POST", "le": "0.01"}, 4.0 * t],
                ["zaptrix_http_request_seconds_bucket", {"route": "/webhooks/meta", "method": "POST", "le": "+Inf"}, 5.0 * t],
            ],
        }
        for t in range(30)
    ]  # fmt: skip
    recording = tmp_path / "run-metrics.jsonl"
    recording.write_text("\n".join(json.dumps(line) for line in lines))
    series, _start, end = load([recording])
    assert end == 29.0
    out = tmp_path / "dashboard.png"
    draw(series, end, out)
    assert out.read_bytes().startswith(PNG_MAGIC)
