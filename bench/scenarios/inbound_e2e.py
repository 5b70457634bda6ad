"""inbound_e2e: a customer's message from Meta's webhook to the Bitrix24 stand-in, whole system.

The whole system runs (mapper, token-keeper, both web services, both dispatchers, both stand-ins; real
Kafka and PostgreSQL). The Bitrix24 stand-in's rate limit is raised (POST /_sandbox/config) and so is the
bitrix dispatcher's own per-portal pacing (ZAPTRIX_BITRIX_RATE_PER_S), so neither limits: this measures
our pipeline, not Bitrix24's 2 requests/s (that is portal_rate's job).

Every customer writes once first (first contact: CRM contact + chat, not measured). Then signed webhooks
go straight to meta-ingress at a steady rate (open loop); per message the latency is from writing the
webhook request to the "at" of the stand-in's imconnector.send.messages call that carries its wamid.
Every wamid must arrive exactly once (the request log and the chats are both checked).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from typing import Any

from bench.common import (
    BenchEnv,
    ProcessMonitor,
    forget_pid,
    histogram_means,
    latency_summary_ms,
    remember_pid,
    scrape,
    stack_pids,
    system,
    topic_event_times,
)
from bench.flows import (
    WAMID_RE,
    bitrix_config,
    bitrix_stats,
    chat_message_counts,
    plan_messages,
    sample_backlog,
    send_burst,
    send_paced,
    wait_delivered,
)
from bench.profiling import Profiles
from bench.profiling import notes as profile_notes
from bench.result import Result, verdict
from bench.series import latency_series

NAME = "inbound_e2e"
RATE = 200.0
SECONDS = 15.0
CUSTOMERS = 50
TARGET_P99_MS = 100.0
UNLIMITED = {"rate_limit_drain_per_s": 100000.0, "rate_limit_burst": 100000.0}
# Variant, reported beside the figure and not judged: the processes of the path restarted with 10 % head
# sampling (what the tracing SDK costs per message at 100 %, which the goal keeps).
SAMPLER_10PCT = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
SAMPLED_PROCESSES = ("mapper", "bitrix-dispatcher", "meta-ingress")
SAMPLED_SECONDS = 8.0
CPU_PROCESSES = ("meta-ingress", "bitrix-dispatcher", "mapper")


def cpu_per_message_ms(processes: list[dict[str, Any]], messages: int) -> dict[str, float]:
    """CPU time per delivered message of the processes on the path (ms)."""
    cpu = {p["process"]: p["cpu_s"] for p in processes if p["process"] in CPU_PROCESSES}
    return {name: round(cpu[name] * 1000 / messages, 2) for name in CPU_PROCESSES if name in cpu and messages}


async def _sampled_phase(env: BenchEnv, sut: Any, run_id: str, bitrix: Any) -> dict[str, Any]:
    """Restart the path's processes with 10 % head sampling, then the same load for SAMPLED_SECONDS."""
    for name in SAMPLED_PROCESSES:
        old = sut.pids().get(name, [])
        await sut.local.stop_process(name)
        for pid in old:
            forget_pid(pid)
        proc = next(p for p in sut.local.definitions() if p.name == name)
        proc.env = proc.env | SAMPLER_10PCT
        await sut.local.start_process(proc, 60)
        assert proc.proc is not None
        remember_pid(proc.proc.pid)
    # One message per customer first: the restarted dispatcher has joined and its caches are warm.
    warm = plan_messages(run_id + "a", CUSTOMERS, CUSTOMERS, first=0)  # hex: WAMID_RE
    await send_burst(sut.ports.meta_web, warm, connections=8)
    await wait_delivered(bitrix, {s.wamid for s in warm}, timeout_s=60)
    seconds = env.seconds(SAMPLED_SECONDS, 3)
    items = plan_messages(run_id + "b", int(RATE * seconds), CUSTOMERS, first=0)
    monitor = ProcessMonitor({n: p for n, p in sut.pids().items() if n in CPU_PROCESSES})
    monitor.start()
    try:
        report = await send_paced(sut.ports.meta_web, items, RATE)
        got, _, complete = await wait_delivered(bitrix, {s.wamid for s in items}, timeout_s=30)
    finally:
        await monitor.stop()
    accepted = report.ok
    latencies = [min(got[s.wamid]) - s.sent_at for s in accepted if s.wamid in got]
    firsts = [min(got[s.wamid]) for s in accepted if s.wamid in got]
    return {
        "sampler": SAMPLER_10PCT,
        "processes_restarted": list(SAMPLED_PROCESSES),
        "seconds": seconds,
        "latency_ms": latency_summary_ms(latencies),
        "delivery_rate_per_s": round(len(firsts) / (max(firsts) - report.started_at), 1) if firsts else 0.0,
        "missing": len(accepted) - len(latencies),
        "all_arrived_within_timeout": complete,
        "cpu_ms_per_message": cpu_per_message_ms(monitor.report(), len(latencies)),
    }


async def run(env: BenchEnv) -> Result:
    res = Result(
        NAME,
        measured=f"webhook sent → imconnector.send.messages at the Bitrix24 stand-in, {RATE:g} msg/s open loop",
        target=f"p99 ≤ {TARGET_P99_MS:g} ms at {RATE:g} msg/s; every message exactly once",
    )
    seconds = env.seconds(SECONDS, 5)
    count = int(RATE * seconds)
    run_id = uuid.uuid4().hex[:6]
    extra = {"bitrix-dispatcher": {"ZAPTRIX_BITRIX_RATE_PER_S": "100000", "ZAPTRIX_BITRIX_BURST": "50"}}
    async with system(env, NAME, extra_env=extra) as sut:
        bitrix = sut.client("bitrix")
        await bitrix_config(bitrix, **UNLIMITED)
        # First contact of every customer (CRM lookup/creation, chat): not part of the measurement.
        warm = plan_messages(run_id, CUSTOMERS, CUSTOMERS, first=0)
        wr = await send_burst(sut.ports.meta_web, warm, connections=8)
        if len(wr.ok) != len(warm):
            raise RuntimeError(f"warm-up webhooks not all accepted: {wr.summary()['answers']}")
        _, _, ok = await wait_delivered(bitrix, {s.wamid for s in warm}, timeout_s=60)
        if not ok:
            raise RuntimeError("warm-up messages did not all reach the Bitrix24 stand-in within 60 s")
        before = await bitrix_stats(bitrix)

        items = plan_messages(run_id, count, CUSTOMERS, first=CUSTOMERS)
        monitor = ProcessMonitor(sut.pids() | stack_pids(env) | {"bench harness (sender)": [os.getpid()]})
        timeline: list[dict[str, Any]] = []
        sampler = asyncio.create_task(sample_backlog(sut, timeline, time.time()))
        monitor.start()
        profiles = Profiles(env, NAME)
        pids = sut.pids()
        await profiles.start(
            {n: pids[n][0] for n in ("bitrix-dispatcher", "mapper", "meta-ingress") if n in pids}, seconds - 1
        )
        try:
            report = await send_paced(sut.ports.meta_web, items, RATE)
            got, requests, complete = await wait_delivered(bitrix, {s.wamid for s in items}, timeout_s=30)
        finally:
            await monitor.stop()
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        profiled = await profiles.collect()
        kafka_at = await topic_event_times(env.kafka, sut.topic("wa-to-b24"))
        chats = await chat_message_counts(bitrix)
        after = await bitrix_stats(bitrix)
        breakdown: dict[str, object] = {}
        try:
            disp = await scrape(sut.client("bitrix_dispatcher"), "/metrics")
            breakdown["bitrix_dispatcher_event_handle"] = histogram_means(
                disp, "zaptrix_event_handle_seconds"
            )
            breakdown["bitrix_dispatcher_external_calls"] = histogram_means(
                disp, "zaptrix_external_api_seconds", by="method"
            )
            mapper = await scrape(sut.client("mapper_metrics"), "/metrics")
            breakdown["mapper_rpcs"] = histogram_means(mapper, "zaptrix_mapper_rpc_seconds", by="method")
            breakdown["messages_per_call"] = histogram_means(
                disp, "zaptrix_bitrix_messages_per_call", seconds=False
            )
        except Exception as exc:  # diagnostics only
            breakdown["error"] = repr(exc)
        try:
            sampled: dict[str, Any] = await _sampled_phase(env, sut, run_id, bitrix)
        except Exception as exc:  # a variant: its failure must not hide the figure
            sampled = {"error": repr(exc)}

    accepted = report.ok
    latencies = [min(got[s.wamid]) - s.sent_at for s in accepted if s.wamid in got]
    missing = [s.wamid for s in accepted if s.wamid not in got]
    dup_requests = sum(1 for s in items if len(got.get(s.wamid, [])) > 1)
    dup_chats = sum(1 for s in items if chats.get(s.wamid, 0) > 1)
    lat = latency_summary_ms(latencies)
    # Split at Kafka: webhook -> record on the topic (meta-ingress, producer timestamp), and record ->
    # imconnector.send.messages at the stand-in (consumer, bitrix dispatcher, mapper, token-keeper).
    before_kafka = [kafka_at[f"wa:{s.wamid}"] - s.sent_at for s in accepted if f"wa:{s.wamid}" in kafka_at]
    after_kafka = [
        min(got[s.wamid]) - kafka_at[f"wa:{s.wamid}"]
        for s in accepted
        if s.wamid in got and f"wa:{s.wamid}" in kafka_at
    ]
    firsts = [min(got[s.wamid]) for s in accepted if s.wamid in got]
    delivery_rate = len(firsts) / (max(firsts) - report.started_at) if firsts else 0.0
    send_calls = [
        r
        for r in requests
        if r.get("method") == "imconnector.send.messages" and r.get("at", 0) >= report.started_at
    ]
    per_call = [len(set(WAMID_RE.findall(str(r.get("params"))))) for r in send_calls]
    res.details = {
        "rate_per_s": RATE,
        "seconds": seconds,
        "customers": CUSTOMERS,
        "sender": report.summary(),
        "latency_ms": lat,
        "delivery_rate_per_s": round(delivery_rate, 1),
        "webhook_to_kafka_ms": latency_summary_ms(before_kafka),
        "kafka_to_bitrix_ms": latency_summary_ms(after_kafka),
        "breakdown": breakdown,
        "profiles": profiled,
        "consumer_lag_samples": [(r["t"], r.get("consumer_lag")) for r in timeline],
        "delivered": len(accepted) - len(missing),
        "missing": len(missing),
        "missing_examples": missing[:5],
        "duplicated_in_requests": dup_requests,
        "duplicated_in_chats": dup_chats,
        "all_arrived_within_timeout": complete,
        "send_messages_calls": len(send_calls),
        "messages_per_call_mean": round(sum(per_call) / len(per_call), 1) if per_call else None,
        "cpu_ms_per_message": cpu_per_message_ms(monitor.report(), len(latencies)),
        "sampled_10pct": sampled,
        "bitrix_stats_before": before,
        "bitrix_stats_after": after,
        "pipeline_settings": {
            "bitrix_stand_in": UNLIMITED,
            "bitrix_dispatcher": extra["bitrix-dispatcher"],
        },
    }
    # Per message (send time, latency) for the latency-over-time plot (bench/plots.py).
    res.details["latency_series"] = latency_series(
        (s.sent_at, min(got[s.wamid]) - s.sent_at) for s in accepted if s.wamid in got
    )
    res.processes = monitor.report()
    non200 = len(items) - len(accepted)
    p99 = lat["p99_ms"]
    passed = (
        p99 is not None
        and p99 <= TARGET_P99_MS
        and not missing
        and not dup_requests
        and not dup_chats
        and not non200
    )
    res.verdict = verdict(passed)
    res.figure = (
        f"p50 {lat['p50_ms']} / p90 {lat['p90_ms']} / p99 {p99} / max {lat['max_ms']} ms over {lat['count']} messages "
        f"at {report.summary()['offered_rate_per_s']} msg/s (delivered at {delivery_rate:.0f}/s); lost {len(missing)}, duplicated "
        f"{max(dup_requests, dup_chats)}, non-200 webhooks {non200}; "
        f"{len(send_calls)} send.messages calls ({res.details['messages_per_call_mean']} msg/call)"
    )
    bk, ak = res.details["webhook_to_kafka_ms"], res.details["kafka_to_bitrix_ms"]
    res.baseline = (
        f"split at Kafka (record timestamps): webhook → topic p50 {bk['p50_ms']} / p99 {bk['p99_ms']} ms; "
        f"topic → Bitrix24 stand-in p50 {ak['p50_ms']} / p99 {ak['p99_ms']} ms"
    )
    res.notes.append(
        "Bitrix24 stand-in limit raised and the bitrix dispatcher's pacing set to 100000/s (burst 50) so that "
        "Bitrix24's 2 req/s does not limit; customers' first contact happens before the measurement"
    )
    cpu = res.details["cpu_ms_per_message"]
    res.notes.append("CPU per message (100 % sampled): " + ", ".join(f"{n} {v} ms" for n, v in cpu.items()))
    if "latency_ms" in sampled:
        sl = sampled["latency_ms"]
        res.notes.append(
            f"10 % head-sampled variant (OTEL_TRACES_SAMPLER=parentbased_traceidratio, ARG=0.1 on "
            f"{', '.join(SAMPLED_PROCESSES)}; {sampled['seconds']:g} s at {RATE:g} msg/s; not judged): "
            f"p50 {sl['p50_ms']} / p99 {sl['p99_ms']} ms, delivered at {sampled['delivery_rate_per_s']}/s, "
            f"missing {sampled['missing']}; CPU per message "
            + ", ".join(f"{n} {v} ms" for n, v in sampled["cpu_ms_per_message"].items())
        )
    else:
        res.notes.append(f"10 % head-sampled variant failed: {sampled.get('error')}")
    res.notes += profile_notes(profiled)
    res.notes.append(f"measured at {time.strftime('%H:%M:%S', time.localtime(report.started_at))}")
    return res
