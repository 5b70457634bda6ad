"""outbound_throughput: the meta dispatcher draining a burst of 1,000 operator replies against the Graph
stand-in at the channel's configured 80 messages/s.

200 customers write first through the Graph stand-in's simulator (POST /_sandbox/webhooks, 50 per signed
webhook), so each has an open 24-hour window there, a conversation in the mapper and an Open Lines chat
in the Bitrix24 stand-in (its limit and the bitrix dispatcher's pacing are raised so that this set-up is
quick; opening 1,000 conversations through the real first-contact path takes minutes on a busy 2-core
box). Each customer gets 5 replies, so Meta's pair limit (1 per 6 s per customer) is RELAXED, in the Graph
stand-in (POST /_sandbox/config pair_rate_per_s=1000, pair_burst=10) and in the meta dispatcher's own
pair pacing (ZAPTRIX_PAIR_RATE_PER_S / ZAPTRIX_PAIR_BURST) alike: this scenario is about the channel's
80 messages/s, not the pair limit.

The burst: 1,000 OperatorMessage envelopes (what bitrix-ingress produces for ONIMCONNECTORMESSAGEADD,
with the real chat ids) published at once to the b24-to-wa topic with zaptrix.kafka.EventProducer: this
measures the dispatcher, not bitrix-ingress (outbound_latency covers the whole path).

Status webhooks: each accepted send makes the Graph stand-in post sent/delivered/read webhooks (240/s at
80 sends/s). On a 2-core box the stand-in's own webhook client (httpx) cannot keep up with that: its
connection pool times out, its event loop starves and its answers to the dispatcher's sends time out, so
the figure would measure the stand-in. By default the stand-in's status webhooks therefore go to a
closed port with no retries during the burst (cheap, immediate connection refusal);
BENCH_OUTBOUND_STATUSES=1 keeps them flowing to meta-ingress as usual.

From the stand-in's /_sandbox/sent: achieved send rate (accepted sends, first to last) against 80/s,
the count of 130429 (and any other refusal), and that every reply (a unique reference in its text) was
sent exactly once.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import time
import uuid
from collections import Counter
from typing import Any

from bench.common import (
    CONNECTOR_ID,
    SANDBOX_LINE_ID,
    SANDBOX_MEMBER_ID,
    SANDBOX_PHONE_NUMBER_ID,
    BenchEnv,
    ProcessMonitor,
    free_port,
    stack_pids,
    system,
)
from bench.flows import bitrix_config, graph_config, graph_sent, graph_webhook_attempts, open_conversations
from bench.profiling import Profiles
from bench.profiling import notes as profile_notes
from bench.result import Result, verdict
from bench.webhooks import customer

NAME = "outbound_throughput"
REPLIES = 1000
CUSTOMERS = 200
PAIR_RELAXED = {"pair_rate_per_s": 1000.0, "pair_burst": 10}
WITH_STATUSES = os.environ.get("BENCH_OUTBOUND_STATUSES", "") not in ("", "0", "false")
CONFIGURED_MPS = 80.0
TARGET_SHARE = 0.95
CUSTOMER_BASE = 100_000
DRAIN_TIMEOUT_S = 90.0


def ref(run: str, i: int) -> str:
    return f"BENCH{run}R{i:05d}"


async def _publish_burst(
    env: BenchEnv, prefix: str, topic: str, chats: dict[str, dict[str, Any]], run: str
) -> float:
    from zaptrix.kafka import EventProducer, new_envelope
    from zaptrix.settings import KafkaSettings
    from zaptrix.v1 import events_pb2

    envelopes = []
    ordered = sorted(chats.items())
    for i in range(REPLIES):
        wa_id, chat = ordered[i % len(ordered)]
        bitrix_message_id = str(9_000_000 + i)
        envelopes.append(
            new_envelope(
                f"b24:{SANDBOX_MEMBER_ID}:bench{run}{bitrix_message_id}",
                f"{SANDBOX_PHONE_NUMBER_ID}:{wa_id}",
                events_pb2.PLATFORM_BITRIX24,
                operator_message=events_pb2.OperatorMessage(
                    member_id=SANDBOX_MEMBER_ID,
                    domain="sandbox.bitrix24.com",
                    connector_id=CONNECTOR_ID,
                    line_id=SANDBOX_LINE_ID,
                    bitrix_chat_id=str(chat["chat_id"]),
                    bitrix_message_id=bitrix_message_id,
                    external_chat_id=chat["external_chat_id"],
                    operator_user_id="1",
                    text_bbcode=f"[b]Bench Operator:[/b][br] Vielen Dank! [i]Wir melden uns.[/i] ref {ref(run, i)}",
                ),
            )
        )
    producer = EventProducer(
        KafkaSettings(bootstrap_servers=env.kafka, topic_prefix=prefix), client_id="bench"
    )
    await producer.start()
    try:
        t = time.time()
        await producer.publish(topic, envelopes)
        return t
    finally:
        await producer.stop()


async def run(env: BenchEnv) -> Result:
    res = Result(
        NAME,
        measured=f"meta-dispatcher → Graph stand-in: burst of {REPLIES} replies ({CUSTOMERS} customers) at {CONFIGURED_MPS:g}/s configured",
        target=f"≥ {TARGET_SHARE:.0%} of {CONFIGURED_MPS:g} msg/s; 0 x 130429; exactly {REPLIES} sent (none lost, none twice)",
    )
    run_id = uuid.uuid4().hex[:6]
    wa_ids = [customer(CUSTOMER_BASE + i) for i in range(CUSTOMERS)]
    extra = {
        "bitrix-dispatcher": {"ZAPTRIX_BITRIX_RATE_PER_S": "100000", "ZAPTRIX_BITRIX_BURST": "50"},
        "meta-dispatcher": {
            "ZAPTRIX_PAIR_RATE_PER_S": str(PAIR_RELAXED["pair_rate_per_s"]),
            "ZAPTRIX_PAIR_BURST": str(PAIR_RELAXED["pair_burst"]),
        },
    }
    async with system(env, NAME, extra_env=extra) as sut:
        graph, bitrix = sut.client("graph"), sut.client("bitrix")
        await bitrix_config(bitrix, rate_limit_drain_per_s=100000.0, rate_limit_burst=100000.0)
        await graph_config(graph, **PAIR_RELAXED)
        t_setup = time.time()
        chats = await open_conversations(graph, bitrix, wa_ids, SANDBOX_PHONE_NUMBER_ID, timeout_s=150)
        setup_s = time.time() - t_setup
        if not WITH_STATUSES:
            await graph_config(
                graph, webhook_url=f"http://127.0.0.1:{free_port()}/webhooks/meta", webhook_retry_delays_s=[]
            )
        await asyncio.sleep(2.0)  # inbound messages used the number's throughput bucket: let it refill
        ours = set(wa_ids)
        before = [s for s in await graph_sent(graph) if s.get("wa_id") in ours or s.get("to") in ours]

        monitor = ProcessMonitor(sut.pids() | stack_pids(env) | {"bench harness": [os.getpid()]})
        monitor.start()
        profiles = Profiles(env, NAME)
        pids = sut.pids()
        await profiles.start({n: pids[n][0] for n in ("meta-dispatcher", "sandbox-graph") if n in pids}, 10)
        try:
            t_burst = await _publish_burst(env, sut.prefix, sut.topic("b24-to-wa"), chats, run_id)
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            sent: list[dict[str, Any]] = []
            while time.monotonic() < deadline:
                await asyncio.sleep(2.0)
                sent = [s for s in await graph_sent(graph) if s.get("wa_id") in ours or s.get("to") in ours]
                if sum(1 for s in sent if s.get("http_status") == 200) >= REPLIES:
                    break
            await asyncio.sleep(3.0)  # anything sent twice would show up now
            sent = [s for s in await graph_sent(graph) if s.get("wa_id") in ours or s.get("to") in ours]
        finally:
            await monitor.stop()
        webhooks = await graph_webhook_attempts(graph, since=t_burst)
        profiled = await profiles.collect()

    sent = sent[len(before) :] if before else sent
    accepted = sorted((s for s in sent if s.get("http_status") == 200), key=lambda s: s["at"])
    codes = Counter(str(s.get("error_code")) for s in sent if s.get("http_status") != 200)
    throughput_errors = codes.get("130429", 0)
    pattern = re.compile(rf"BENCH{run_id}R\d{{5}}")
    per_reply = Counter(m for s in accepted for m in set(pattern.findall(json.dumps(s.get("payload")))))
    missing = [ref(run_id, i) for i in range(REPLIES) if per_reply.get(ref(run_id, i), 0) == 0]
    twice = [r for r, n in per_reply.items() if n > 1]
    if len(accepted) >= 2:
        span = accepted[-1]["at"] - accepted[0]["at"]
        rate = (len(accepted) - 1) / span if span > 0 else float("inf")
    else:
        span, rate = 0.0, 0.0
    from_burst = len(accepted) / (accepted[-1]["at"] - t_burst) if accepted else 0.0
    t0 = accepted[0]["at"] if accepted else t_burst
    secs = math.ceil(span) + 1
    per_s = [0] * secs
    for s in accepted:
        per_s[min(secs - 1, int(s["at"] - t0))] += 1
    full_seconds = per_s[1:-1] if len(per_s) > 2 else per_s
    share = rate / CONFIGURED_MPS
    passed = (
        share >= TARGET_SHARE
        and throughput_errors == 0
        and not missing
        and not twice
        and len(accepted) == REPLIES
    )
    res.verdict = verdict(passed)
    res.figure = (
        f"{rate:.1f} msg/s = {share:.1%} of {CONFIGURED_MPS:g} (first→last accepted send; {from_burst:.1f}/s from the "
        f"burst); 130429: {throughput_errors}; other refusals: {sum(codes.values()) - throughput_errors}; "
        f"sent {len(accepted)} of {REPLIES} (missing {len(missing)}, twice {len(twice)}); drained in "
        f"{(accepted[-1]['at'] - t_burst) if accepted else float('nan'):.1f} s"
    )
    res.details = {
        "replies": REPLIES,
        "customers": len(wa_ids),
        "replies_per_customer": REPLIES // len(wa_ids),
        "pair_limit_relaxed": PAIR_RELAXED,
        "produced_how": "OperatorMessage envelopes published at once with zaptrix.kafka.EventProducer to the b24-to-wa topic",
        "setup_open_conversations_s": round(setup_s, 1),
        "rate_first_to_last_per_s": round(rate, 2),
        "rate_from_burst_per_s": round(from_burst, 2),
        "share_of_configured": round(share, 4),
        "sends_per_second": per_s,
        "min_full_second": min(full_seconds) if full_seconds else None,
        "max_full_second": max(full_seconds) if full_seconds else None,
        "refusals_by_code": dict(codes),
        "accepted": len(accepted),
        "missing": len(missing),
        "missing_examples": missing[:5],
        "sent_twice": len(twice),
        "status_webhooks": "to meta-ingress"
        if WITH_STATUSES
        else "to a closed port, no retries (BENCH_OUTBOUND_STATUSES=1 to keep them)",
        "status_webhook_attempts": webhooks,
        "profiles": profiled,
        "stand_in": {"throughput_mps": CONFIGURED_MPS, "pair_limit": PAIR_RELAXED},
    }
    res.processes = monitor.report()
    res.notes.append(res.details["produced_how"] + " (bitrix-ingress is not in this path)")
    res.notes.append(
        f"{len(wa_ids)} customers x {REPLIES // len(wa_ids)} replies; Meta's pair limit relaxed in the Graph stand-in "
        "and in the meta dispatcher (pair_rate_per_s=1000, pair_burst=10) so that only the 80/s channel limit applies"
    )
    res.notes.append(
        "status webhooks of the Graph stand-in: "
        + (
            "sent to meta-ingress"
            if WITH_STATUSES
            else "switched off during the burst (closed port, no retries): "
            "the stand-in's httpx webhook client cannot post 240/s on this box (see docs/benchmarks.md)"
        )
    )
    res.notes += profile_notes(profiled)
    res.notes.append(
        f"opening {len(wa_ids)} conversations through the real inbound path took {setup_s:.1f} s"
    )
    return res
