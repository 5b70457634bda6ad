"""portal_rate: one portal at Bitrix24's documented REST limit while customers write faster than it.

The Bitrix24 stand-in at its defaults (leaky bucket: drain 2 requests/s, burst 50) and the bitrix
dispatcher at its defaults (its own per-portal pacing). Customers' first contact happens before the
measurement (with the limit raised; setting it back resets the bucket). Then 100 messages/s for ONE
portal, from several customers, for 30 s, straight to meta-ingress.

Sampled every second: the bitrix dispatcher's `zaptrix_kafka_consumer_lag` (its /metrics) and the
stand-in's stats. Afterwards, from the stand-in's request log: requests per second, messages delivered per
second, and the backlog (sent - delivered) per second. Pass: no request refused (QUERY_LIMIT_EXCEEDED
count stays 0), and the backlog does not grow (least-squares slope of sent - delivered over the sending window
after its first 3 s ≤ 5% of the offered rate, and the rest drains within 10 s of the senders stopping),
and every message arrives exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
import uuid
from typing import Any

from bench.common import (
    BenchEnv,
    ProcessMonitor,
    latency_summary_ms,
    slope,
    stack_pids,
    system,
)
from bench.flows import (
    bitrix_config,
    bitrix_stats,
    plan_messages,
    sample_backlog,
    send_burst,
    send_paced,
    wait_delivered,
)
from bench.result import Result, verdict

NAME = "portal_rate"
RATE = 100.0
SECONDS = 30.0
CUSTOMERS = 20
DRAIN = 2.0
BURST = 50.0
DRAIN_TIMEOUT_S = 60.0


def _per_second(times: list[float], t0: float, seconds: int) -> list[int]:
    counts = [0] * seconds
    for t in times:
        # The event loop's timers may wake a hair early: the first message can be sent just before t0.
        i = max(0, math.floor(t - t0)) if t - t0 > -1 else -1
        if 0 <= i < seconds:
            counts[i] += 1
    return counts


async def run(env: BenchEnv) -> Result:
    res = Result(
        NAME,
        measured=f"one portal, Bitrix24 stand-in at {DRAIN:g} req/s (burst {BURST:g}), {RATE:g} msg/s offered",
        target="never more requests than the portal's limit (0 refused); backlog does not grow",
    )
    seconds = env.seconds(SECONDS, 8)
    count = int(RATE * seconds)
    run_id = uuid.uuid4().hex[:6]
    timeline: list[dict[str, Any]] = []
    async with system(env, NAME) as sut:
        bitrix = sut.client("bitrix")
        await bitrix_config(bitrix, rate_limit_drain_per_s=100000.0, rate_limit_burst=100000.0)
        warm = plan_messages(run_id, CUSTOMERS, CUSTOMERS, first=0)
        wr = await send_burst(sut.ports.meta_web, warm, connections=4)
        if len(wr.ok) != len(warm):
            raise RuntimeError(f"warm-up webhooks not all accepted: {wr.summary()['answers']}")
        _, _, ok = await wait_delivered(bitrix, {s.wamid for s in warm}, timeout_s=120)
        if not ok:
            raise RuntimeError("first contact of the customers did not complete within 120 s")
        # Back to the documented limit (this also empties the bucket), and give the dispatcher's own
        # pacer time to refill as it would after an idle moment.
        await bitrix_config(bitrix, rate_limit_drain_per_s=DRAIN, rate_limit_burst=BURST)
        await asyncio.sleep(3)
        before = await bitrix_stats(bitrix)

        items = plan_messages(run_id, count, CUSTOMERS, first=CUSTOMERS)
        monitor = ProcessMonitor(sut.pids() | stack_pids(env) | {"bench harness (sender)": [os.getpid()]})
        t0 = time.time()
        sampler = asyncio.create_task(sample_backlog(sut, timeline, t0))
        monitor.start()
        try:
            report = await send_paced(sut.ports.meta_web, items, RATE)
            sent_done = time.time()
            got, requests, complete = await wait_delivered(
                bitrix, {s.wamid for s in items}, timeout_s=DRAIN_TIMEOUT_S, interval_s=2.0
            )
            drained_at = time.time()
        finally:
            await monitor.stop()
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        after = await bitrix_stats(bitrix)

    t0 = report.started_at
    # HTTP hits only: a batch's sub-calls are logged too (via: batch) but the bucket counts the batch once.
    window = [r for r in requests if float(r["at"]) >= t0 - 0.01 and not r.get("via")]
    horizon = math.ceil((drained_at if complete else time.time()) - t0) + 1
    req_per_s = _per_second([float(r["at"]) for r in window], t0, horizon)
    refused_per_s = _per_second([float(r["at"]) for r in window if r.get("status") == 503], t0, horizon)
    sent_times = [s.sent_at for s in report.ok]
    first_delivery = {w: min(ts) for w, ts in got.items()}
    delivered_times = [first_delivery[s.wamid] for s in report.ok if s.wamid in first_delivery]
    delivered_per_s = _per_second(delivered_times, t0, horizon)
    sent_per_s = _per_second(sent_times, t0, horizon)
    backlog = []
    acc_s = acc_d = 0
    for i in range(horizon):
        acc_s += sent_per_s[i]
        acc_d += delivered_per_s[i]
        backlog.append(acc_s - acc_d)
    send_secs = int(seconds)
    steady_points = [(i, float(backlog[i])) for i in range(min(3, send_secs // 2), send_secs)]
    growth = slope(steady_points)
    refused = after["rate_limited_count"] - before["rate_limited_count"]
    missing = [s.wamid for s in report.ok if s.wamid not in got]
    dups = sum(1 for s in report.ok if len(got.get(s.wamid, [])) > 1)
    latencies = [first_delivery[s.wamid] - s.sent_at for s in report.ok if s.wamid in first_delivery]
    steady = req_per_s[2:send_secs] if send_secs > 4 else req_per_s
    steady_rate = sum(steady) / max(len(steady), 1)
    max_in_second = max(req_per_s) if req_per_s else 0
    sending_delivery_rate = sum(delivered_per_s[:send_secs]) / max(send_secs, 1)
    # From the log (the poll that noticed it is up to 2 s late).
    last_delivery = max(delivered_times) if delivered_times else drained_at
    drain_after_send_s = round(max(0.0, last_delivery - sent_done), 1) if complete else None

    growth_limit = 0.05 * RATE
    not_growing = (
        growth is not None
        and growth <= growth_limit
        and drain_after_send_s is not None
        and drain_after_send_s <= 10
    )
    passed = refused == 0 and not_growing and complete and not dups
    res.verdict = verdict(passed)
    res.details = {
        "rate_per_s": RATE,
        "seconds": seconds,
        "customers": CUSTOMERS,
        "stand_in_limit": {"drain_per_s": DRAIN, "burst": BURST},
        "sender": report.summary(),
        "stats_before": before,
        "stats_after": after,
        "refused_requests": refused,
        "requests_per_second": req_per_s,
        "refused_per_second": refused_per_s,
        "sent_per_second": sent_per_s,
        "delivered_per_second": delivered_per_s,
        "backlog_per_second": backlog,
        "backlog_slope_msgs_per_s": None if growth is None else round(growth, 2),
        "backlog_slope_limit": growth_limit,
        "max_requests_in_any_second_measured": max_in_second,
        "steady_request_rate_per_s": round(steady_rate, 2),
        "delivery_rate_while_sending_per_s": round(sending_delivery_rate, 1),
        "all_delivered": complete,
        "drain_after_sending_s": drain_after_send_s,
        "missing": len(missing),
        "duplicated": dups,
        "latency_ms": latency_summary_ms(latencies),
        "samples": timeline,
    }
    res.processes = monitor.report()
    lag: list[float] = [float(r["consumer_lag"]) for r in timeline if r.get("consumer_lag") is not None]
    res.figure = (
        f"refused {refused}; stand-in max_requests_in_any_second {after['max_requests_in_any_second']} "
        f"(measured window {max_in_second}); steady {steady_rate:.2f} req/s; delivered "
        f"{sending_delivery_rate:.0f} msg/s while {RATE:g} offered; backlog slope "
        f"{'n/a' if growth is None else f'{growth:+.1f}'} msg/s (max backlog {max(backlog) if backlog else 0}); "
        f"consumer lag max {max(lag) if lag else 'n/a'}; "
        + (
            f"all {len(report.ok)} delivered {drain_after_send_s} s after sending stopped"
            if complete
            else f"{len(missing)} not delivered {DRAIN_TIMEOUT_S:.0f} s after sending stopped"
        )
        + (f"; {dups} duplicated" if dups else "")
    )
    shown = min(len(delivered_per_s), send_secs + 5)
    res.notes.append("requests/s: " + " ".join(str(x) for x in req_per_s[:shown]))
    res.notes.append("delivered/s: " + " ".join(str(x) for x in delivered_per_s[:shown]))
    res.notes.append("backlog (sent - delivered) each second: " + " ".join(str(x) for x in backlog[:shown]))
    res.notes.append(
        "max_requests_in_any_second of the stand-in covers its whole life, including the warm-up with the "
        "limit raised; the measured-window figure is computed from its request log"
    )
    return res
