"""bench/plots.py draws PNGs from small synthetic results (no system, no benchmark run)."""

from __future__ import annotations

import json
from pathlib import Path

from bench import plots
from bench.result import is_ours
from bench.series import latency_series

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write(folder: Path, name: str, data: dict[str, object]) -> None:
    (folder / f"{name}.json").write_text(json.dumps(data))


def test_every_curve_is_drawn_from_synthetic_results(tmp_path: Path) -> None:
    results, out = tmp_path / "results", tmp_path / "png"
    results.mkdir()
    # A backlog: latency ramps up with the send time.
    series = latency_series((1000.0 + i / 100, 0.02 + i / 1000) for i in range(300))
    for name in ("inbound_e2e", "outbound_latency"):
        _write(
            results,
            name,
            {"started_at": 1000.0, "details": {"latency_series": series, "latency_ms": {"p99_ms": 316}}},
        )
    point = {"cpu_us_per_msg": 7000, "dispatcher_cpu_us_per_msg": 2500, "p99_ms": 80}
    _write(
        results,
        "scaling",
        {
            "details": {
                "rate_per_s": 100,
                "curves": {
                    "portals": [point | {"n": n} for n in (1, 10, 100)],
                    "numbers": [point | {"n": n} for n in (1, 10, 100)],
                },
            }
        },
    )
    _write(
        results,
        "replicas",
        {
            "details": {
                "points": [
                    {"replicas": k, "throughput_per_s": 150, "cpu_us_per_msg": 7000} for k in (1, 2, 4)
                ],
                "projection": {
                    "partitions": 6,
                    "per_replica_per_s": 300,
                    "curve": [{"replicas": k, "per_s": 300 * k} for k in (1, 2, 3, 6)],
                },
            }
        },
    )
    procs = [{"process": "mapper", "rss_mb_max": 80.0}, {"process": "kafka (JVM)", "rss_mb_max": 400.0}]
    _write(results, "summary", {"scenarios": {"inbound_e2e": {"processes": procs}}})

    written = plots.draw(results, out)

    synthetic = {"inbound_e2e", "outbound_latency", "scaling", "replicas", "summary"}
    assert sorted(p.name for p in written) == sorted(c.png for c in plots.CURVES if c.source in synthetic)
    for path in written:
        assert path.read_bytes().startswith(PNG_MAGIC)


def test_a_result_without_the_data_draws_nothing_and_only_filters(tmp_path: Path) -> None:
    _write(tmp_path, "inbound_e2e", {"details": {}})
    _write(tmp_path, "outbound_latency", {"details": {"latency_series": latency_series([(5.0, 0.01)])}})

    assert plots.draw(tmp_path, tmp_path / "a", only=["inbound_e2e"]) == []
    assert [p.name for p in plots.draw(tmp_path, tmp_path / "b")] == [
        "outbound_latency-latency-over-time.png"
    ]


def test_rolling_p99_follows_a_burst_and_comes_back_down() -> None:
    xs = [i / 10 for i in range(100)]  # 10 s, 10 messages a second
    ys = [500.0 if 4.0 <= x < 5.0 else 10.0 for x in xs]

    cx, cy = plots.rolling_percentile(xs, ys, 99, window=1.0, step=0.5)

    peak = dict(zip(cx, cy, strict=True))
    assert peak[4.5] == 500.0
    assert peak[1.0] == 10.0 and peak[8.0] == 10.0


def test_max_rss_per_process_is_the_highest_over_scenarios() -> None:
    summary = {
        "scenarios": {
            "a": {"processes": [{"process": "mapper", "rss_mb_max": 70.0}]},
            "b": {"processes": [{"process": "mapper", "rss_mb_max": 90.5}]},
        }
    }

    assert plots.max_rss_by_process(summary) == {"mapper": (90.5, "b")}
    assert is_ours("mapper") and is_ours("bitrix-dispatcher-2")
    assert not any(
        map(is_ours, ["kafka (JVM)", "bare-sanic (baseline)", "wrk (load generator)", "sandbox-graph"])
    )


def test_memory_judges_our_processes_against_the_goal() -> None:
    from bench.result import memory

    rows = [
        {"process": "mapper", "rss_mb_max": 80.0},
        {"process": "meta-ingress", "rss_mb_max": 160.0},
        {"process": "kafka (JVM)", "rss_mb_max": 400.0},
    ]

    mem = memory(rows)

    assert mem is not None
    assert (mem["max_mib"], mem["process"], mem["within_goal"]) == (160.0, "meta-ingress", False)
    assert "kafka (JVM)" not in mem["max_mib_by_process"]
    assert memory(rows[:1]) is not None and memory(rows[:1])["within_goal"] is True  # type: ignore[index]
    assert memory([{"process": "kafka (JVM)", "rss_mb_max": 400.0}]) is None
