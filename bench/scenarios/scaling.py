"""scaling: how the inbound path's cost grows with the number of portals and of WhatsApp numbers.

One system (mapper, token-keeper, meta-ingress, bitrix-ingress, bitrix dispatcher, Bitrix24 stand-in;
real Kafka and PostgreSQL). The same inbound load, RATE msg/s open loop for SECONDS from CUSTOMERS
customers, is spread round-robin over 1, 10 and 100 tenants along two axes:
  - portals: N portals, each with its own number (tenant i: portal i, number i);
  - numbers: N numbers, all bound to the sandbox portal's Open Line.
N = 1 is the sandbox portal with the sandbox number, measured once and shared by both curves. Tenants are
added between the points through the real install flow and the token-keeper/mapper APIs (bench/tenants.py),
so a later point runs with every earlier tenant seeded too. Each point has its own customers, whose first
contact (CRM contact, chat) is made before its measurement and not measured.

Per point: CPU per delivered message summed over the services' processes (from /proc/<pid>/stat, over the
measured phase until the last message arrived), the bitrix dispatcher's and mapper's share, Kafka and
PostgreSQL and the stand-in beside it; latency webhook -> imconnector.send.messages (p50/p99), delivery
rate, send.messages calls (fewer messages per call as the portals grow: batching is per portal).
Bitrix24's rate limit is lifted in the stand-in and the dispatcher's pacing (as in inbound_e2e): with
2 req/s per portal the portals axis would measure the limit.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

from bench.common import BenchEnv, ProcessMonitor, latency_summary_ms, stack_pids, system
from bench.flows import WAMID_RE, Sent, bitrix_config, bitrix_requests, deliveries, send_paced
from bench.result import Result, is_ours, verdict
from bench.tenants import (
    SANDBOX,
    UNLIMITED,
    Tenant,
    add_tenants,
    number_tenant,
    portal_tenant,
    signed_webhook,
)
from bench.webhooks import customer, wamid

NAME = "scaling"
RATE = 100.0
SECONDS = 10.0
CUSTOMERS = 100  # per point, spread over its tenants (each tenant gets CUSTOMERS / N of them)
SLOWEST = 12  # the slowest messages of each point, listed in the JSON
COUNTS = (1, 10, 100)
SERVICES = {"sandbox-bitrix", "mapper", "token-keeper", "meta-ingress", "bitrix-ingress", "bitrix-dispatcher"}
DISPATCHER_PACING = {"ZAPTRIX_BITRIX_RATE_PER_S": "100000", "ZAPTRIX_BITRIX_BURST": "50"}


def plan(run: str, point: int, tenants: list[Tenant], count: int, first: int) -> list[tuple[Sent, Tenant]]:
    """`count` messages round-robin over the point's CUSTOMERS customers; customer k writes to tenant
    k mod N. Wamid numbers from `first` (the warm-up uses 0..CUSTOMERS-1)."""
    out = []
    for i in range(count):
        k = i % CUSTOMERS
        wa_id = customer(point * 10_000 + k)
        out.append((Sent(wamid(f"{run}{point:02x}", first + i), wa_id, 0.0), tenants[k % len(tenants)]))
    return out


async def delivered(
    bitrix: Any, members: set[str], wamids: set[str], timeout_s: float
) -> tuple[dict[str, list[float]], list[dict[str, Any]], bool]:
    """Polls every involved portal's request log until each wamid reached imconnector.send.messages."""
    deadline = time.monotonic() + timeout_s
    while True:
        requests: list[dict[str, Any]] = []
        for member in sorted(members):
            requests += await bitrix_requests(bitrix, member)
        got = deliveries(requests)
        if wamids <= got.keys() or time.monotonic() > deadline:
            return got, requests, wamids <= got.keys()
        await asyncio.sleep(1.0)


async def measure(
    env: BenchEnv, sut: Any, run: str, point: int, tenants: list[Tenant], seconds: float
) -> dict[str, Any]:
    bitrix = sut.client("bitrix")
    members = {t.member_id for t in tenants}
    # First contact of each customer (CRM contact, chat; a new portal's first token use): not measured.
    warm = plan(run, point, tenants, CUSTOMERS, 0)
    wr = await send_paced(
        sut.ports.meta_web,
        [s for s, _ in warm],
        1e9,
        connections=8,
        concurrency_cap=8,
        bodies=[signed_webhook(t, s.wa_id, s.wamid, i) for i, (s, t) in enumerate(warm)],
    )
    if len(wr.ok) != len(warm):
        raise RuntimeError(f"warm-up webhooks not all accepted: {wr.summary()['answers']}")
    _, _, ok = await delivered(bitrix, members, {s.wamid for s, _ in warm}, 90)
    if not ok:
        raise RuntimeError(f"first contacts of {len(tenants)} tenants not all delivered within 90 s")

    count = int(RATE * seconds)
    items = plan(run, point, tenants, count, CUSTOMERS)
    bodies = [signed_webhook(t, s.wa_id, s.wamid, i) for i, (s, t) in enumerate(items)]
    monitor = ProcessMonitor(sut.pids() | stack_pids(env) | {"bench harness (sender)": [os.getpid()]})
    monitor.start()
    try:
        report = await send_paced(sut.ports.meta_web, [s for s, _ in items], RATE, bodies=bodies)
        got, requests, complete = await delivered(bitrix, members, {s.wamid for s, _ in items}, 60)
    finally:
        await monitor.stop()
    accepted = report.ok
    latencies = [min(got[s.wamid]) - s.sent_at for s in accepted if s.wamid in got]
    portal_of = {s.wamid: t.member_id for s, t in items}
    # The tail in detail: when the slowest messages were sent and to which portal (a burst or a pattern?).
    slowest = sorted(
        (
            (
                round(1000 * (min(got[s.wamid]) - s.sent_at), 1),
                round(s.sent_at - report.started_at, 2),
                portal_of[s.wamid],
            )
            for s in accepted
            if s.wamid in got
        ),
        reverse=True,
    )[:SLOWEST]
    firsts = [min(got[s.wamid]) for s in accepted if s.wamid in got]
    lat = latency_summary_ms(latencies)
    n_ok = len(firsts)
    cpu = {row["process"]: row["cpu_s"] for row in monitor.report()}
    services = sum(v for k, v in cpu.items() if is_ours(k) and k in SERVICES)

    def per_msg(seconds_: float) -> float | None:
        return round(1e6 * seconds_ / n_ok, 1) if n_ok else None

    calls = [
        r
        for r in requests
        if r.get("method") == "imconnector.send.messages" and r.get("at", 0) >= report.started_at
    ]
    per_call = [len(set(WAMID_RE.findall(str(r.get("params"))))) for r in calls]
    stack = sum(v for k, v in cpu.items() if k.startswith(("kafka", "postgresql")))
    return {
        "n": len(tenants),
        "portals": len(members),
        "numbers": len({t.phone_number_id for t in tenants}),
        "messages": count,
        "delivered": n_ok,
        "missing": len(accepted) - n_ok,
        "not_accepted": count - len(accepted),
        "duplicated": sum(1 for s, _ in items if len(got.get(s.wamid, [])) > 1),
        "all_arrived": complete,
        "offered_per_s": report.summary()["offered_rate_per_s"],
        "delivered_per_s": round(n_ok / (max(firsts) - report.started_at), 1) if firsts else 0.0,
        "p50_ms": lat["p50_ms"],
        "p99_ms": lat["p99_ms"],
        "latency_ms": lat,
        "slowest": [{"latency_ms": ms, "sent_s": at, "portal": member} for ms, at, member in slowest],
        "cpu_us_per_msg": per_msg(services),
        "dispatcher_cpu_us_per_msg": per_msg(cpu.get("bitrix-dispatcher", 0.0)),
        "mapper_cpu_us_per_msg": per_msg(cpu.get("mapper", 0.0)),
        "meta_ingress_cpu_us_per_msg": per_msg(cpu.get("meta-ingress", 0.0)),
        "kafka_postgres_cpu_us_per_msg": per_msg(stack),
        "stand_in_cpu_us_per_msg": per_msg(cpu.get("sandbox-bitrix", 0.0)),
        "send_messages_calls": len(calls),
        "messages_per_call_mean": round(sum(per_call) / len(per_call), 1) if per_call else None,
        "processes": monitor.report(),
    }


async def run(env: BenchEnv) -> Result:
    res = Result(
        NAME,
        measured=(
            f"CPU per message (services, /proc) and p99 webhook → Bitrix24 stand-in at {RATE:g} msg/s vs "
            f"{'/'.join(map(str, COUNTS))} portals and numbers"
        ),
        target="curves (issue 14): how cost grows with portals and numbers; every message exactly once",
    )
    seconds = env.seconds(SECONDS, 3)
    run_id = uuid.uuid4().hex[:6]
    extra = {"bitrix-dispatcher": DISPATCHER_PACING}
    points: dict[str, dict[str, Any]] = {}
    seeding_s: dict[str, float] = {}
    started = time.monotonic()
    async with system(env, NAME, only=SERVICES, extra_env=extra, seed=False) as sut:
        await sut.local.seed()  # installs the sandbox portal and binds the sandbox number
        bitrix = sut.client("bitrix")
        await bitrix_config(bitrix, **UNLIMITED)
        seeding_s["system"] = round(time.monotonic() - started, 1)
        seeded: set[Tenant] = {SANDBOX}
        axes = {"portals": portal_tenant, "numbers": number_tenant}
        order = [("portals", 1)] + [(axis, n) for n in COUNTS[1:] for axis in axes]
        for index, (axis, n) in enumerate(order):
            tenants = [SANDBOX] + [axes[axis](i) for i in range(1, n)]
            new = [t for t in tenants if t not in seeded]
            t0 = time.monotonic()
            await add_tenants(sut.local, bitrix, new)
            seeded |= set(new)
            seeding_s[f"{axis}-{n}"] = round(time.monotonic() - t0, 1)
            print(f"  {axis} = {n}: {len(new)} tenants added in {seeding_s[f'{axis}-{n}']} s", flush=True)
            point = await measure(env, sut, run_id, index, tenants, seconds)
            points[f"{axis}-{n}"] = point
            print(
                f"  {axis} = {n}: {point['cpu_us_per_msg']} µs CPU/msg, p99 {point['p99_ms']} ms, "
                f"delivered {point['delivered']}/{point['messages']}",
                flush=True,
            )

    curves = {
        axis: [points["portals-1"] if n == 1 else points[f"{axis}-{n}"] for n in COUNTS] for axis in axes
    }
    res.details = {
        "rate_per_s": RATE,
        "seconds": seconds,
        "customers_per_point": CUSTOMERS,
        "counts": list(COUNTS),
        "curves": {
            axis: [{k: v for k, v in p.items() if k != "processes"} for p in ps]
            for axis, ps in curves.items()
        },
        "seeding_s": seeding_s,
        "processes_per_point": {k: p["processes"] for k, p in points.items()},
        "pipeline_settings": {"bitrix_stand_in": UNLIMITED, "bitrix_dispatcher": DISPATCHER_PACING},
    }
    # The process table: each process's highest RSS and CPU share over the points.
    merged: dict[str, dict[str, Any]] = {}
    for p in points.values():
        for proc in p["processes"]:
            m = merged.setdefault(proc["process"], dict(proc) | {"cpu_pct_max": proc["cpu_pct"]})
            m["rss_mb_max"] = max(m["rss_mb_max"], proc["rss_mb_max"])
            m["rss_mb_end"] = proc["rss_mb_end"]
            m["cpu_pct_max"] = max(m["cpu_pct_max"], proc["cpu_pct"])
    res.processes = list(merged.values())
    bad = [k for k, p in points.items() if p["missing"] or p["duplicated"] or p["not_accepted"]]
    res.verdict = verdict(not bad)

    def curve_text(axis: str) -> str:
        return ", ".join(f"{p['n']}: {p['cpu_us_per_msg']} µs / p99 {p['p99_ms']} ms" for p in curves[axis])

    res.figure = f"CPU per message / p99 — portals {curve_text('portals')}; numbers {curve_text('numbers')}"
    res.baseline = (
        "N = 1 (sandbox portal and number) is the baseline of both curves; messages per send.messages call: "
        + ", ".join(f"{k} {p['messages_per_call_mean']}" for k, p in points.items())
    )
    if bad:
        res.notes.append(f"lost, twice or refused in: {', '.join(bad)}")
    res.notes.append(
        "Bitrix24 stand-in limit and the dispatcher's pacing lifted (as in inbound_e2e); each point's customers "
        f"make first contact before it is measured; seeding took {seeding_s} s"
    )
    return res
