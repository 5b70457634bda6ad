"""replicas: inbound throughput and CPU per message with 1, 2 and 4 bitrix-dispatcher processes in one
consumer group.

One system (mapper, token-keeper, meta-ingress, bitrix-ingress, Bitrix24 stand-in; real Kafka and
PostgreSQL), Bitrix24's limit lifted in the stand-in and the dispatcher's pacing (as in inbound_e2e).
CUSTOMERS customers make first contact with the system's own dispatcher, which is then stopped. For each
k: k copies of the bitrix-dispatcher process (same entrypoint, same settings, own metrics port, one
consumer group) are started and left to join the group until it is stable with k members (so no
rebalance falls into the measurement); then BURST signed webhooks go to meta-ingress as fast as it takes
them, and the figure is the drain rate: delivered / (last imconnector.send.messages - first webhook sent),
with the CPU of every process over that window. The replicas are stopped again before the next k.

This box has 2 cores for everything, so k replicas share the CPU one replica already had: the measured
rate shows the coordination cost (more consumers, smaller batches), not the scaling. The scaling is
projected: one replica on its own core carries 1e6 / (dispatcher µs CPU per message) msg/s, and with the
partitions of the topic spread by the range assignor the busiest replica holds ceil(P / k) of P
partitions, so k replicas carry that x P / ceil(P / k) (no more than P replicas do anything).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import time
import uuid
from dataclasses import replace
from typing import Any

import httpx

from bench.common import (
    BenchEnv,
    ProcessMonitor,
    free_port,
    latency_summary_ms,
    remember_pid,
    stack_pids,
    system,
)
from bench.flows import bitrix_config, plan_messages, send_burst, wait_delivered
from bench.result import Result, is_ours, verdict
from bench.tenants import UNLIMITED

NAME = "replicas"
REPLICAS = (1, 2, 4)
BURST = 3000  # messages per k at BENCH_SCALE=1
CUSTOMERS = 120  # conversation keys spread over the partitions
PARTITIONS = 6  # charts/zaptrix/values.yaml kafka.topics.partitions and dev/stack/kafka.sh: the default
TODAY_INBOUND_PER_S = 200.0  # issue 14's goal load per number (inbound); outbound: 80/s
SERVICES = {"sandbox-bitrix", "mapper", "token-keeper", "meta-ingress", "bitrix-ingress", "bitrix-dispatcher"}


async def _ready(port: int) -> bool:
    try:
        async with httpx.AsyncClient(timeout=1.0) as client:
            return (await client.get(f"http://127.0.0.1:{port}/ready")).status_code == 200
    except httpx.HTTPError:
        return False


async def group_members(bootstrap: str, group: str) -> tuple[str, int]:
    """(state, member count) of a consumer group."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    for resp in responses:
        for g in resp.groups:
            # (error_code, group_id, state, protocol_type, protocol, members[, ...])
            if g[1] == group:
                return str(g[2]), len(g[5])
    return "Dead", 0


def projected(per_replica: float, k: int, partitions: int) -> float:
    """Throughput of k replicas, each on its own core, the busiest holding ceil(P / k) partitions."""
    busy = math.ceil(partitions / min(k, partitions))
    return per_replica * partitions / busy


async def run(env: BenchEnv) -> Result:
    res = Result(
        NAME,
        measured="inbound drain rate and CPU per message with 1, 2, 4 bitrix-dispatcher replicas (one group)",
        target=(
            "curves (issue 14): CPU per message and projected scaling with the partitions; partitions for "
            "10x today's load; every message exactly once"
        ),
    )
    burst = max(300, int(BURST * env.scale))
    run_id = uuid.uuid4().hex[:6]
    group = f"bench-replicas-{run_id}"
    pacing = {"ZAPTRIX_BITRIX_RATE_PER_S": "100000", "ZAPTRIX_BITRIX_BURST": "50"}
    extra = {"bitrix-dispatcher": pacing | {"ZAPTRIX_CONSUMER_GROUP": group}}
    points: list[dict[str, Any]] = []
    async with system(env, NAME, only=SERVICES, extra_env=extra, seed=False) as sut:
        await sut.local.seed()
        bitrix = sut.client("bitrix")
        await bitrix_config(bitrix, **UNLIMITED)
        warm = plan_messages(run_id, CUSTOMERS, CUSTOMERS, first=0)
        wr = await send_burst(sut.ports.meta_web, warm, connections=8)
        if len(wr.ok) != len(warm):
            raise RuntimeError(f"warm-up webhooks not all accepted: {wr.summary()['answers']}")
        if not (await wait_delivered(bitrix, {s.wamid for s in warm}, timeout_s=90))[2]:
            raise RuntimeError("first contacts not all delivered within 90 s")
        template = next(p for p in sut.local.definitions() if p.name == "bitrix-dispatcher")
        await sut.local.stop_process("bitrix-dispatcher")
        first = CUSTOMERS
        for k in REPLICAS:
            names = [f"bitrix-dispatcher-{i + 1}" for i in range(k)]
            procs = []
            for name in names:
                port = free_port()
                procs.append(
                    replace(
                        template,
                        name=name,
                        env=template.env | {"ZAPTRIX_METRICS_PORT": str(port)},
                        ready=functools.partial(_ready, port),
                        proc=None,
                        pump=None,
                    )
                )
            try:
                await asyncio.gather(*(sut.local.start_process(proc, 90) for proc in procs))
                for started in procs:
                    if started.proc is not None:
                        remember_pid(started.proc.pid)
                deadline = time.monotonic() + 60
                state, members = "", 0
                while time.monotonic() < deadline:
                    state, members = await group_members(env.kafka, group)
                    if state == "Stable" and members == k:
                        break
                    await asyncio.sleep(0.5)
                await asyncio.sleep(1.0)  # the assignment reaches every member after the group is stable
                items = plan_messages(run_id, burst, CUSTOMERS, first=first)
                first += burst
                monitor = ProcessMonitor(
                    sut.pids() | stack_pids(env) | {"bench harness (sender)": [os.getpid()]}
                )
                monitor.start()
                try:
                    report = await send_burst(sut.ports.meta_web, items, connections=16)
                    got, _, complete = await wait_delivered(bitrix, {s.wamid for s in items}, timeout_s=120)
                finally:
                    await monitor.stop()
            finally:
                for name in names:
                    with contextlib.suppress(Exception):
                        await sut.local.stop_process(name)
            firsts = [min(got[s.wamid]) for s in report.ok if s.wamid in got]
            n_ok = len(firsts)
            window = (max(firsts) - report.started_at) if firsts else 0.0
            cpu = {row["process"]: row["cpu_s"] for row in monitor.report()}
            services = sum(v for p, v in cpu.items() if is_ours(p))
            dispatchers = sum(v for p, v in cpu.items() if p.startswith("bitrix-dispatcher"))

            def per_msg(s: float, n: int = n_ok) -> float | None:
                return round(1e6 * s / n, 1) if n else None

            points.append(
                {
                    "replicas": k,
                    "group_state": state,
                    "group_members": members,
                    "messages": burst,
                    "delivered": n_ok,
                    "missing": len(report.ok) - n_ok,
                    "not_accepted": burst - len(report.ok),
                    "duplicated": sum(1 for s in items if len(got.get(s.wamid, [])) > 1),
                    "all_arrived": complete,
                    "webhooks_per_s": report.summary()["offered_rate_per_s"],
                    "throughput_per_s": round(n_ok / window, 1) if window > 0 else None,
                    "latency_ms": latency_summary_ms(
                        [min(got[s.wamid]) - s.sent_at for s in report.ok if s.wamid in got]
                    ),
                    "cpu_us_per_msg": per_msg(services),
                    "dispatcher_cpu_us_per_msg": per_msg(dispatchers),
                    "mapper_cpu_us_per_msg": per_msg(cpu.get("mapper", 0.0)),
                    "processes": monitor.report(),
                }
            )
            print(
                f"  {k} replica(s): {points[-1]['throughput_per_s']} msg/s, "
                f"{points[-1]['cpu_us_per_msg']} µs CPU/msg (dispatchers {points[-1]['dispatcher_cpu_us_per_msg']})",
                flush=True,
            )

    base = points[0]
    d_us = base["dispatcher_cpu_us_per_msg"] or 0.0
    m_us = base["mapper_cpu_us_per_msg"] or 0.0
    per_replica = round(1e6 / d_us, 1) if d_us else None
    projection: dict[str, Any] = {"partitions": PARTITIONS, "per_replica_per_s": per_replica}
    if per_replica:
        projection["curve"] = [
            {"replicas": k, "per_s": round(projected(per_replica, k, PARTITIONS), 1)}
            for k in range(1, PARTITIONS + 3)
        ]
        need = 10 * TODAY_INBOUND_PER_S
        replicas_needed = math.ceil(need / per_replica)
        projection |= {
            "ten_x_inbound_per_s": need,
            "dispatcher_replicas_for_10x": replicas_needed,
            # Range assignment and keyed records: P partitions over r replicas give the busiest
            # ceil(P/r); enough partitions means at least one per replica.
            "partitions_for_10x": replicas_needed,
            "default_partitions_carry_per_s": round(projected(per_replica, PARTITIONS, PARTITIONS), 1),
            # With the default partitions: the fewest replicas that carry it (None: no number of them does).
            "replicas_for_10x_with_default_partitions": next(
                (k for k in range(1, PARTITIONS + 1) if projected(per_replica, k, PARTITIONS) >= need), None
            ),
            "mapper_cores_for_10x": round(need * m_us / 1e6, 1) if m_us else None,
        }
    res.details = {
        "burst": burst,
        "customers": CUSTOMERS,
        "consumer_group": group,
        "points": [{k: v for k, v in p.items() if k != "processes"} for p in points],
        "projection": projection,
        "processes_per_point": {p["replicas"]: p["processes"] for p in points},
        "pipeline_settings": {"bitrix_stand_in": UNLIMITED, "bitrix_dispatcher": pacing},
    }
    merged: dict[str, dict[str, Any]] = {}
    for point in points:
        for proc in point["processes"]:
            m = merged.setdefault(proc["process"], dict(proc) | {"cpu_pct_max": proc["cpu_pct"]})
            m["rss_mb_max"] = max(m["rss_mb_max"], proc["rss_mb_max"])
            m["rss_mb_end"] = proc["rss_mb_end"]
            m["cpu_pct_max"] = max(m["cpu_pct_max"], proc["cpu_pct"])
    res.processes = list(merged.values())
    bad = [p["replicas"] for p in points if p["missing"] or p["duplicated"] or p["not_accepted"]]
    res.verdict = verdict(not bad and len(points) == len(REPLICAS))
    res.figure = "; ".join(
        f"{p['replicas']}: {p['throughput_per_s']} msg/s, {p['cpu_us_per_msg']} µs CPU/msg "
        f"(dispatchers {p['dispatcher_cpu_us_per_msg']})"
        for p in points
    )
    if per_replica:
        res.baseline = (
            f"projected with a core per replica: {per_replica:g} msg/s per replica, "
            f"{projection['default_partitions_carry_per_s']:g} msg/s with the default {PARTITIONS} partitions; "
            f"10x today's inbound ({projection['ten_x_inbound_per_s']:g}/s) needs "
            f"{projection['dispatcher_replicas_for_10x']} replicas and as many partitions (with the default "
            f"{PARTITIONS}: {projection['replicas_for_10x_with_default_partitions'] or 'not reachable'} replicas), "
            f"and ~{projection['mapper_cores_for_10x']} cores of mapper"
        )
    if bad:
        res.notes.append(f"lost, twice or refused with {bad} replicas")
    unstable = [
        p["replicas"] for p in points if p["group_state"] != "Stable" or p["group_members"] != p["replicas"]
    ]
    if unstable:
        res.notes.append(f"consumer group not stable with all members before the burst for k = {unstable}")
    res.notes.append("2 shared cores: k replicas share the CPU of one; the projection assumes a core each")
    return res
