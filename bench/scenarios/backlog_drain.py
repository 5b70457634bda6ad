"""backlog_drain: 100,000 customer messages queued during a Bitrix24 outage, across 100 portals, drained
once Bitrix24 is back.

Set-up: 100 portals in the Bitrix24 stand-in (POST /_sandbox/portals), each installed through
bitrix-ingress's real ONAPPINSTALL flow (token-keeper stores its tokens), one WhatsApp number per portal
bound to its Open Line in the mapper (BindChannel over mTLS, as operator tooling does). Each portal's
customers make their first contact (CRM contact, Open Lines chat) with the limits raised, so that the
drain measures the steady path.

The outage: the bitrix dispatcher is stopped (what Bitrix24 being unreachable leaves behind: the
customer messages wait on the wa-to-b24 topic), and the backlog is published straight to that topic with
zaptrix.kafka.EventProducer: the CustomerMessage envelopes meta-ingress builds for text webhooks (event
id ``wa:<wamid>``, key ``<phone_number_id>:<wa_id>``, occurred_at spread over the 10 outage minutes),
1,000 per portal round-robin over its customers. Then Bitrix24 "comes back": the stand-in at its
documented limit (leaky bucket 2 req/s, burst 50: setting it empties the bucket) and the dispatcher
started again at its default pacing.

Measured: time from the restart until the last message is delivered (from the stand-in's request logs),
delivered/s per second (a curve), the dispatcher's consumer lag per second, HTTP requests per portal per
second against the 2 req/s limit, refusals (QUERY_LIMIT_EXCEEDED: must be 0), each message delivered
exactly once (every wamid in one successful imconnector.send.messages, none twice), and the CPU of every
process. The platform's bound is portals x 2 req/s x messages per request (+ the first burst of 50); when
the drain is much slower than that and the dispatcher/mapper are at their CPU's limit, it is our CPU.

BENCH_SCALE multiplies the message count (1: 100,000; 0.1: 10,000); portals stay 100. Hard time limit ~8
minutes: a drain still running at the deadline is reported with its rate and projected end.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from zaptrix_testing.seeding import chat_customer

from bench.common import (
    CONNECTOR_ID,
    BenchEnv,
    ProcessMonitor,
    metric_sum,
    remember_pid,
    scrape,
    stack_pids,
    system,
)
from bench.flows import bitrix_config, deliveries
from bench.lookup_drain_plots import register, save
from bench.result import Result, verdict
from bench.tenants import add_portal
from bench.webhooks import sample_text, wamid

register()

NAME = "backlog_drain"
PORTALS = 100
MESSAGES = 100_000
CUSTOMERS_PER_PORTAL = 5
OUTAGE_S = 600.0  # the messages' occurred_at spans this (the outage they queued up in)
LIMIT_RATE = 2.0  # Bitrix24's documented REST limit per portal (bitrix24.md §6)
LIMIT_BURST = 50.0
TIME_LIMIT_S = 420.0  # bench/run.py SCENARIOS: the runner's limit is this x max(scale, 0.5) + 60
SETTLE_S = 3.0
# BENCH_DRAIN_MAX_RECORDS: the restarted dispatcher's ZAPTRIX_KAFKA_CONSUMER_MAX_RECORDS (default: its own).
MAX_RECORDS = int(os.environ.get("BENCH_DRAIN_MAX_RECORDS", "0") or 0)
# BENCH_DRAIN_CATCH_UP_RECORDS: its ZAPTRIX_CONSUMER_CATCH_UP_RECORDS (the system passes no ZAPTRIX_* of
# the caller's environment to its processes, so this is the way to vary it).
CATCH_UP_RECORDS = int(os.environ.get("BENCH_DRAIN_CATCH_UP_RECORDS", "0") or 0)
# BENCH_DRAIN_IN_FLIGHT: its ZAPTRIX_KAFKA_CONSUMER_MAX_IN_FLIGHT_BATCHES (default: its own).
IN_FLIGHT = int(os.environ.get("BENCH_DRAIN_IN_FLIGHT", "0") or 0)


def portal(p: int) -> str:
    return f"drain-portal-{p:03d}"


def number(p: int) -> str:
    return f"1300000{p:08d}"


def customer_of(p: int, c: int) -> str:
    return f"4915{p:03d}{c:05d}"


def envelope(run: str, i: int, p: int, c: int, at: datetime) -> Any:
    """The CustomerMessage envelope meta-ingress publishes for a text webhook (normalize.customer_message)."""
    from zaptrix.v1 import events_pb2

    w, pnid, wa = wamid(run, i), number(p), customer_of(p, c)
    msg = events_pb2.CustomerMessage(
        phone_number_id=pnid,
        display_phone_number=f"1555{p:07d}",
        wa_id=wa,
        profile_name=f"Drain Customer {p}-{c}",
        wamid=w,
        type="text",
        text=sample_text(i),
        raw_json=f'{{"from":"{wa}","id":"{w}","timestamp":"{int(at.timestamp())}","type":"text"}}',
    )
    msg.sent_at.FromDatetime(at)
    env = events_pb2.Envelope(
        event_id=f"wa:{w}",
        conversation_key=f"{pnid}:{wa}",
        source=events_pb2.PLATFORM_WHATSAPP,
        customer_message=msg,
    )
    env.occurred_at.FromDatetime(at)
    return env


async def publish(env: BenchEnv, prefix: str, topic: str, envelopes: list[Any], chunk: int = 5000) -> float:
    from zaptrix.kafka import EventProducer
    from zaptrix.settings import KafkaSettings

    producer = EventProducer(
        KafkaSettings(bootstrap_servers=env.kafka, topic_prefix=prefix), client_id="bench"
    )
    await producer.start()
    try:
        t = time.monotonic()
        for i in range(0, len(envelopes), chunk):
            await producer.publish(topic, envelopes[i : i + chunk])
        return time.monotonic() - t
    finally:
        await producer.stop()


async def add_portals(sut: Any, bitrix: httpx.AsyncClient) -> None:
    """100 portals in the stand-in, each installed through bitrix-ingress, one number bound to each."""
    from zaptrix.v1 import mapper_pb2, mapper_pb2_grpc

    gate = asyncio.Semaphore(8)

    async def one(p: int) -> None:
        async with gate:
            await add_portal(bitrix, portal(p))

    await asyncio.gather(*(one(p) for p in range(PORTALS)))
    async with sut.local.grpc_channel("mapper") as channel:
        stub = mapper_pb2_grpc.MapperStub(channel)
        for p in range(PORTALS):
            await stub.BindChannel(
                mapper_pb2.BindChannelRequest(
                    channel=mapper_pb2.Channel(
                        phone_number_id=number(p),
                        display_phone_number=f"1555{p:07d}",
                        member_id=portal(p),
                        line_id=1,
                        connector_id=CONNECTOR_ID,
                        crm_mode=mapper_pb2.CRM_MODE_GATEWAY,
                        active=True,
                    )
                ),
                timeout=10,
            )


async def portal_json(bitrix: httpx.AsyncClient, p: int, what: str) -> Any:
    resp = await bitrix.get(f"/_sandbox/portals/{portal(p)}/{what}", timeout=120)
    resp.raise_for_status()
    return resp.json()[what]


async def each_portal(bitrix: httpx.AsyncClient, what: str, parallel: int = 4) -> list[Any]:
    gate = asyncio.Semaphore(parallel)

    async def one(p: int) -> Any:
        async with gate:
            return await portal_json(bitrix, p, what)

    return list(await asyncio.gather(*(one(p) for p in range(PORTALS))))


async def first_contacts(
    env: BenchEnv, sut: Any, bitrix: httpx.AsyncClient, run: str, timeout_s: float
) -> float:
    """One message per customer through the running dispatcher; returns once every customer has a chat."""
    now = datetime.now(UTC)
    warm = [
        envelope(f"{run}w", p * CUSTOMERS_PER_PORTAL + c, p, c, now)
        for p in range(PORTALS)
        for c in range(CUSTOMERS_PER_PORTAL)
    ]
    t0 = time.monotonic()
    await publish(env, sut.prefix, sut.topic("wa-to-b24"), warm)
    while True:
        chats = await each_portal(bitrix, "chats", parallel=8)
        have = sum(1 for p, cs in enumerate(chats) for c in cs if chat_customer(c).startswith(f"4915{p:03d}"))
        if have >= PORTALS * CUSTOMERS_PER_PORTAL:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout_s:
            raise RuntimeError(
                f"first contact: {have} of {PORTALS * CUSTOMERS_PER_PORTAL} chats after {timeout_s:.0f} s"
            )
        await asyncio.sleep(2.0)


async def sample_lag(sut: Any, out: list[dict[str, Any]], t0: float) -> None:
    topic = sut.topic("wa-to-b24")
    while True:
        row: dict[str, Any] = {"t": round(time.time() - t0, 2)}
        with contextlib.suppress(Exception):
            samples = await scrape(sut.client("bitrix_dispatcher"), "/metrics")
            # The gauge appears after the first poll batch: until then there is no figure, not a zero.
            if any(n == "zaptrix_kafka_consumer_lag" and lb.get("topic") == topic for n, lb, _ in samples):
                row["consumer_lag"] = metric_sum(samples, "zaptrix_kafka_consumer_lag", topic=topic)
                row["consumer_lag_all_topics"] = metric_sum(samples, "zaptrix_kafka_consumer_lag")
        out.append(row)
        await asyncio.sleep(max(0.0, 1.0 - (time.time() - t0 - row["t"])))


async def run(env: BenchEnv) -> Result:
    started = time.monotonic()
    hard_deadline = started + TIME_LIMIT_S * max(env.scale, 0.5) + 60 - 75  # room to collect and stop
    total = max(PORTALS * CUSTOMERS_PER_PORTAL, int(MESSAGES * env.scale))
    per_portal = total // PORTALS
    total = per_portal * PORTALS
    res = Result(
        NAME,
        measured=f"drain of {total:,} queued customer messages across {PORTALS} portals after a Bitrix24 outage "
        f"(stand-in at {LIMIT_RATE:g} req/s, burst {LIMIT_BURST:g} per portal)",
        target="caught up; 0 refused, 0 lost, 0 twice (what bounds it, Bitrix24's limit or our CPU, reported)",
    )
    from bitrix_ingress.settings import DispatcherSettings
    from zaptrix.settings import KafkaSettings

    batch_max_messages = int(DispatcherSettings.model_fields["bitrix_batch_max_messages"].default)
    # While it lags, the dispatcher polls its catch-up batch (never less than its normal poll batch).
    max_records = max(
        int(MAX_RECORDS or KafkaSettings.model_fields["consumer_max_records"].default),
        CATCH_UP_RECORDS or int(DispatcherSettings.model_fields["consumer_catch_up_records"].default),
    )
    run_id = uuid.uuid4().hex[:6]
    only = {"sandbox-bitrix", "mapper", "token-keeper", "bitrix-ingress", "bitrix-dispatcher"}
    raised = {"ZAPTRIX_BITRIX_RATE_PER_S": "100000", "ZAPTRIX_BITRIX_BURST": "50"}
    timeline: list[dict[str, Any]] = []
    async with system(env, NAME, only=only, extra_env={"bitrix-dispatcher": raised}) as sut:
        bitrix = sut.client("bitrix")
        await bitrix_config(bitrix, rate_limit_drain_per_s=100000.0, rate_limit_burst=100000.0)
        t = time.monotonic()
        await add_portals(sut, bitrix)
        portals_s = time.monotonic() - t
        print(f"  {PORTALS} portals installed and bound in {portals_s:.1f} s", flush=True)
        contacts_s = await first_contacts(env, sut, bitrix, run_id, timeout_s=150)
        print(f"  {PORTALS * CUSTOMERS_PER_PORTAL} first contacts in {contacts_s:.1f} s", flush=True)

        # The outage: no dispatcher while the backlog queues up.
        await sut.local.stop_process("bitrix-dispatcher")
        before = {p: len(r) for p, r in enumerate(await each_portal(bitrix, "requests"))}
        t_out = datetime.now(UTC) - timedelta(seconds=OUTAGE_S)
        envelopes = [
            envelope(
                run_id,
                i,
                i % PORTALS,
                (i // PORTALS) % CUSTOMERS_PER_PORTAL,
                t_out + timedelta(seconds=OUTAGE_S * i / total),
            )
            for i in range(total)
        ]
        publish_s = await publish(env, sut.prefix, sut.topic("wa-to-b24"), envelopes)
        del envelopes
        print(f"  {total:,} envelopes published in {publish_s:.1f} s", flush=True)

        # Bitrix24 is back, at its documented limit (this also empties each bucket); the dispatcher
        # starts again at its default pacing.
        await bitrix_config(bitrix, rate_limit_drain_per_s=LIMIT_RATE, rate_limit_burst=LIMIT_BURST)
        stats_before = await each_portal(bitrix, "stats")
        sut.local.extra_env["bitrix-dispatcher"] = {
            **({"ZAPTRIX_KAFKA_CONSUMER_MAX_RECORDS": str(MAX_RECORDS)} if MAX_RECORDS else {}),
            **({"ZAPTRIX_CONSUMER_CATCH_UP_RECORDS": str(CATCH_UP_RECORDS)} if CATCH_UP_RECORDS else {}),
            **({"ZAPTRIX_KAFKA_CONSUMER_MAX_IN_FLIGHT_BATCHES": str(IN_FLIGHT)} if IN_FLIGHT else {}),
        }
        proc = next(p for p in sut.local.definitions() if p.name == "bitrix-dispatcher")
        monitor = ProcessMonitor(stack_pids(env) | sut.pids())
        monitor.start()
        t0 = time.time()
        try:
            await sut.local.start_process(proc, ready_timeout_s=90)
        finally:
            if proc.proc is not None:
                remember_pid(proc.proc.pid)
        if proc.proc is not None:  # its CPU counts from now (ready), not its start-up
            monitor.processes["bitrix-dispatcher"] = [proc.proc.pid]
            monitor.sample()
        ready_s = time.time() - t0
        sampler = asyncio.create_task(sample_lag(sut, timeline, t0))
        caught_up = False
        try:
            zero_since: float | None = None
            seen_backlog = False  # caught up = the lag seen above zero, then at zero for SETTLE_S
            while time.monotonic() < hard_deadline:
                await asyncio.sleep(1.0)
                lag = timeline[-1].get("consumer_lag") if timeline else None
                seen_backlog = seen_backlog or bool(lag)
                if lag == 0 and seen_backlog:
                    zero_since = zero_since or time.monotonic()
                    if time.monotonic() - zero_since >= SETTLE_S:
                        caught_up = True
                        break
                else:
                    zero_since = None
        finally:
            await monitor.stop()
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        ended = time.time()
        requests = await each_portal(bitrix, "requests")
        stats_after = await each_portal(bitrix, "stats")
        lag_end = timeline[-1].get("consumer_lag") if timeline else None

    # ---- analysis ---------------------------------------------------------------------------------------
    ours = {wamid(run_id, i) for i in range(total)}
    first_at: dict[str, float] = {}
    twice = 0
    per_portal_hits: list[list[float]] = []
    methods: Counter[str] = Counter()  # HTTP requests by method, all portals (a batch counts once)
    refused = 0
    for p, reqs in enumerate(requests):
        new = reqs[before.get(p, 0) :]
        got = deliveries(new)
        for w, ts in got.items():
            if w in ours:
                first_at[w] = min(ts)
                twice += len(ts) > 1
        hits = [float(r["at"]) for r in new if not r.get("via")]
        methods.update(str(r.get("method")) for r in new if not r.get("via"))
        per_portal_hits.append(hits)
        refused += sum(1 for r in new if not r.get("via") and r.get("status") == 503)
    refused_stats = sum(
        int(a.get("rate_limited_count", 0)) - int(b.get("rate_limited_count", 0))
        for a, b in zip(stats_after, stats_before, strict=True)
    )
    delivered = len(first_at)
    missing = total - delivered
    last = max(first_at.values()) if first_at else t0
    first = min(first_at.values()) if first_at else t0
    horizon = max(1, math.ceil((ended if not caught_up else last) - t0) + 1)
    delivered_per_s = [0] * horizon
    for at in first_at.values():
        delivered_per_s[min(horizon - 1, max(0, int(at - t0)))] += 1
    reqs_per_s_all = [0] * horizon
    max_in_second = 0
    portal_rates: list[float] = []
    for hits in per_portal_hits:
        per_s = Counter(int(h - t0) for h in hits if h >= t0)
        for s, n in per_s.items():
            if 0 <= s < horizon:
                reqs_per_s_all[s] += n
        # Steady state: after the first second (whose burst the bucket allows), the most in any second.
        max_in_second = max([max_in_second, *(n for s, n in per_s.items() if s >= 2)])
        if len(hits) >= 2:
            span = max(hits) - min(hits)
            if span > 0:
                portal_rates.append((len(hits) - 1) / span)
    http_hits = sum(len(h) for h in per_portal_hits)
    msgs_per_request = delivered / http_hits if http_hits else 0.0
    drain_s = last - t0 if first_at else float("nan")
    rate = delivered / (last - first) if delivered > 1 and last > first else 0.0
    cpu = {r["process"]: r for r in monitor.report()}
    wall = max(ended - t0, 1e-9)
    box_cpu_pct = sum(r["cpu_pct"] for r in cpu.values())
    disp_ms = 1000 * float(cpu.get("bitrix-dispatcher", {}).get("cpu_s", 0)) / max(delivered, 1)
    mapper_ms = 1000 * float(cpu.get("mapper", {}).get("cpu_s", 0)) / max(delivered, 1)
    all_ms = 1000 * sum(float(r["cpu_s"]) for r in cpu.values()) / max(delivered, 1)
    projected_s = (total / rate) if rate else float("nan")
    # Three ceilings, messages/s: Bitrix24's (every portal at 2 req/s with full batches), the consumer's
    # (at most one request per portal per poll batch once the buckets are spent, so at most rate_per_s
    # batches/s of the catch-up batch's records), and this box's CPU (its cores over the CPU of one message, summed
    # over every process of the path).
    platform_rate = PORTALS * LIMIT_RATE * batch_max_messages
    poll_rate = max_records * LIMIT_RATE if max_records / PORTALS <= batch_max_messages else platform_rate
    cpu_rate = 1000 * (os.cpu_count() or 1) / all_ms if all_ms else float("inf")
    ceilings = {"Bitrix24's limit": platform_rate, "poll batch": poll_rate, "CPU": cpu_rate}
    bound = min(ceilings, key=lambda k: ceilings[k])
    # Issue 14 asks how long the drain takes and what bounds it: both are the figure. The verdict judges
    # what must hold whatever the bound: caught up, nothing refused, lost or delivered twice.
    passed = caught_up and missing == 0 and twice == 0 and refused == 0
    res.verdict = verdict(passed)
    res.figure = (
        (
            f"caught up {drain_s:.0f} s after the restart"
            if caught_up and missing == 0
            else f"NOT caught up at the time limit: {delivered:,} of {total:,} delivered in {wall:.0f} s "
            f"(lag {lag_end}), projected {projected_s:.0f} s"
        )
        + f" at {rate:.0f} msg/s; bound by {bound}: ceilings CPU {cpu_rate:,.0f} msg/s ({all_ms:.1f} ms CPU "
        f"per message, dispatcher {disp_ms:.1f} + mapper {mapper_ms:.1f}; box {box_cpu_pct:.0f} % of "
        f"{os.cpu_count()} cores), poll batch {poll_rate:,.0f} ({max_records} records x {LIMIT_RATE:g}/s), "
        f"Bitrix24 {platform_rate:,.0f} ({PORTALS} x {LIMIT_RATE:g} req/s x {batch_max_messages} msg); "
        f"{msgs_per_request:.1f} msg/request, per portal {sum(portal_rates) / max(len(portal_rates), 1):.2f} "
        f"req/s mean, max {max_in_second} in any second; refused {refused}; lost "
        f"{missing if caught_up else 'n/a'}, twice {twice}"
    )
    res.baseline = (
        f"Bitrix24's limit alone: {platform_rate:,.0f} msg/s, "
        f"{per_portal / (LIMIT_RATE * batch_max_messages):.1f} s for {per_portal:,} per portal"
    )
    t_first = first - t0 if first_at else None
    res.details = {
        "messages": total,
        "portals": PORTALS,
        "per_portal": per_portal,
        "customers_per_portal": CUSTOMERS_PER_PORTAL,
        "limit": {"rate_per_s": LIMIT_RATE, "burst": LIMIT_BURST},
        "setup_s": {
            "portals": round(portals_s, 1),
            "first_contacts": round(contacts_s, 1),
            "publish": round(publish_s, 1),
        },
        "dispatcher_ready_s": round(ready_s, 2),
        "first_delivery_s": round(t_first, 2) if t_first is not None else None,
        "caught_up": caught_up,
        "drain_s": round(drain_s, 1),
        "delivered": delivered,
        "missing": missing,
        "delivered_twice": twice,
        "refused_http_503": refused,
        "refused_stand_in_stats": refused_stats,
        "rate_first_to_last_per_s": round(rate, 1),
        "platform_bound_per_s": round(platform_rate, 1),
        "poll_batch_bound_per_s": round(poll_rate, 1),
        "cpu_bound_per_s": round(cpu_rate, 1),
        "consumer_max_records": max_records,
        "batch_max_messages": batch_max_messages,
        "messages_per_request": round(msgs_per_request, 2),
        "http_requests": http_hits,
        "http_requests_by_method": dict(methods.most_common()),
        "portal_req_per_s_mean": round(sum(portal_rates) / max(len(portal_rates), 1), 3),
        "portal_req_per_s_max": round(max(portal_rates), 3) if portal_rates else None,
        "portal_max_requests_in_any_second_after_first_2s": max_in_second,
        "delivered_per_second": delivered_per_s,
        "requests_per_second_all_portals": reqs_per_s_all,
        "consumer_lag_per_second": timeline,
        "cpu_ms_per_message": {
            "bitrix-dispatcher": round(disp_ms, 3),
            "mapper": round(mapper_ms, 3),
            "all processes": round(all_ms, 3),
        },
        "box_cpu_pct": round(box_cpu_pct, 1),
        "bound": bound,
        "projected_drain_s": round(projected_s, 1) if rate else None,
    }
    res.processes = monitor.report()
    res.notes.append(
        f"set-up: {PORTALS} portals installed + bound {portals_s:.0f} s, {PORTALS * CUSTOMERS_PER_PORTAL} first "
        f"contacts {contacts_s:.0f} s, {total:,} envelopes published {publish_s:.0f} s; dispatcher ready "
        f"{ready_s:.1f} s after the restart, first delivery at {t_first if t_first is None else round(t_first, 1)} s"
    )
    res.notes.append(
        "outage = bitrix dispatcher stopped while the backlog was published to wa-to-b24 (EventProducer, the "
        "envelopes meta-ingress builds); back = stand-in at 2 req/s burst 50 (bucket emptied), dispatcher "
        "restarted with its default pacing"
    )
    pngs = save(res.to_json(), NAME, env.results / "plots")
    res.details["plots"] = pngs
    res.notes.append(
        f"plot: {', '.join(pngs)}" if pngs else "plot: matplotlib not installed (series in the JSON)"
    )
    return res
