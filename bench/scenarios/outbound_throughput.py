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

Status webhooks are ON (the default; BENCH_OUTBOUND_STATUSES=0 points them at a closed port): each accepted
send makes the Graph stand-in post signed sent, delivered and read webhooks (240/s at 80 sends/s) to
meta-ingress, which puts them on the wa-to-b24 topic; the bitrix dispatcher reports them to the Bitrix24
stand-in in imconnector.send.status.delivery / .reading calls (MESSAGES arrays, packed into `batch`) within
the portal's documented 2 requests/s: after the set-up the stand-in's limit goes back to its default
(2/s, burst 50), and the dispatcher paces at its own default. "sent" only updates the message link; with
ZAPTRIX_BITRIX_SEND_READ_STATUS on (the default) each reply costs two marks at Bitrix24, its delivery and
its reading: 160 marks/s in at most 2 requests/s.

From the stand-in's /_sandbox/sent: achieved send rate (accepted sends, first to last) against 80/s,
the count of 130429 (and any other refusal), and that every reply (a unique reference in its text) was
sent exactly once. From the Bitrix24 stand-in's request log: each reply's delivery and reading reached
Bitrix24 exactly once, no request was refused (QUERY_LIMIT_EXCEEDED), and how long after its send each
reply's delivery arrived there.

The verdict also asks for a flat backlog, read two ways:
- the bitrix dispatcher's consumer lag (sampled every second; records polled but not finished count) has a
  least-squares slope, from 3 s into the burst to its last send, of at most FLAT_SLOPE_SHARE (10 %) of the
  status webhooks offered (3 x the send rate, 240/s). A dispatcher that keeps up holds a level (in a
  healthy run 200-500 records, about a pacing interval of arrivals plus those waiting behind their
  conversation's batch in flight, going up and down by a request's worth: slopes of -5..+12/s); one
  that falls behind climbs by what it cannot take (+70..80/s when each poll batch had its own request);
- the last reply's delivery reaches Bitrix24 at most STATUS_AFTER_LAST_SEND_S (3 s) after the last send.
  The stand-in posts delivered 0.15 s and read 0.3 s after a send; then a status waits for its portal's
  next slot (up to 0.5 s at 2 req/s), at times one slot more behind its conversation's batch in flight
  (the consumer keeps a key in one batch at a time), and up to a poll behind in aiokafka's prefetch. A
  healthy run: 1.5 s per reply (p50), the last ~2 s after the last send; a dispatcher that falls
  behind: 5+ s, growing with the burst. 3 s leaves room for the shared box, not for falling behind.
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
    histogram_means,
    scrape,
    slope,
    stack_pids,
    system,
)
from bench.flows import (
    GRAPH_WAMID_RE,
    STATUS_METHODS,
    bitrix_config,
    bitrix_requests,
    graph_config,
    graph_sent,
    graph_webhook_attempts,
    open_conversations,
    sample_backlog,
    status_reports,
)
from bench.profiling import Profiles
from bench.profiling import notes as profile_notes
from bench.result import Result, verdict
from bench.webhooks import customer

NAME = "outbound_throughput"
REPLIES = 1000
CUSTOMERS = 200
PAIR_RELAXED = {"pair_rate_per_s": 1000.0, "pair_burst": 10}
WITH_STATUSES = os.environ.get("BENCH_OUTBOUND_STATUSES", "1") not in ("0", "false", "no")
PORTAL_DEFAULT_LIMIT = {"rate_limit_drain_per_s": 2.0, "rate_limit_burst": 50.0}  # bitrix24.md: 2 req/s
STATUS_TIMEOUT_S = 60.0  # after the last send, for the statuses to reach Bitrix24
FLAT_SLOPE_SHARE = 0.10  # the lag's slope during the burst, as a share of the status webhooks offered
STATUS_AFTER_LAST_SEND_S = 3.0  # the last reply's delivery at Bitrix24, after the last send
CONFIGURED_MPS = 80.0
TARGET_SHARE = 0.95
CUSTOMER_BASE = 100_000
DRAIN_TIMEOUT_S = 90.0


def first_report_at(requests: list[dict[str, Any]], method: str) -> dict[str, float]:
    """wamid → when the first successful ``method`` call (direct or in a batch) carried it to Bitrix24."""
    first: dict[str, float] = {}
    for r in requests:
        if r.get("method") != method or r.get("status") != 200:
            continue
        params = r.get("params")
        text = params if isinstance(params, str) else json.dumps(params)
        for w in set(GRAPH_WAMID_RE.findall(text)):
            at = float(r["at"])
            first[w] = min(first.get(w, at), at)
    return first


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
        target=(
            f"≥ {TARGET_SHARE:.0%} of {CONFIGURED_MPS:g} msg/s; 0 x 130429; exactly {REPLIES} sent (none lost, none "
            "twice)"
            + (
                f"; every delivery and read at Bitrix24 exactly once, 0 refused; backlog flat (lag slope ≤ "
                f"{FLAT_SLOPE_SHARE:.0%} of the status webhooks offered, last delivery ≤ "
                f"{STATUS_AFTER_LAST_SEND_S:g} s after the last send)"
                if WITH_STATUSES
                else ""
            )
        ),
    )
    run_id = uuid.uuid4().hex[:6]
    wa_ids = [customer(CUSTOMER_BASE + i) for i in range(CUSTOMERS)]
    extra = {
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
        await bitrix_config(bitrix, **PORTAL_DEFAULT_LIMIT)
        if not WITH_STATUSES:
            await graph_config(
                graph, webhook_url=f"http://127.0.0.1:{free_port()}/webhooks/meta", webhook_retry_delays_s=[]
            )
        await asyncio.sleep(2.0)  # inbound messages used the number's throughput bucket: let it refill
        requests_before = len(await bitrix_requests(bitrix))
        ours = set(wa_ids)
        before = [s for s in await graph_sent(graph) if s.get("wa_id") in ours or s.get("to") in ours]

        monitor = ProcessMonitor(sut.pids() | stack_pids(env) | {"bench harness": [os.getpid()]})
        monitor.start()
        profiles = Profiles(env, NAME)
        pids = sut.pids()
        await profiles.start({n: pids[n][0] for n in ("meta-dispatcher", "sandbox-graph") if n in pids}, 10)
        timeline: list[dict[str, Any]] = []
        t_sample = time.time()
        sampler = asyncio.create_task(sample_backlog(sut, timeline, t_sample))
        reports: dict[str, dict[str, int]] = {m: {} for m in STATUS_METHODS}
        statuses_done_at: float | None = None
        try:
            t_burst = await _publish_burst(env, sut.prefix, sut.topic("b24-to-wa"), chats, run_id)
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            sent: list[dict[str, Any]] = []
            while time.monotonic() < deadline:
                await asyncio.sleep(2.0)
                sent = [s for s in await graph_sent(graph) if s.get("wa_id") in ours or s.get("to") in ours]
                if sum(1 for s in sent if s.get("http_status") == 200) >= REPLIES:
                    break
            sends_done_at = time.time()
            await asyncio.sleep(3.0)  # anything sent twice would show up now
            sent = [s for s in await graph_sent(graph) if s.get("wa_id") in ours or s.get("to") in ours]
            wamids = {str(s.get("wamid")) for s in sent if s.get("http_status") == 200 and s.get("wamid")}
            if WITH_STATUSES:
                status_deadline = time.monotonic() + STATUS_TIMEOUT_S
                while time.monotonic() < status_deadline:
                    reports = status_reports((await bitrix_requests(bitrix))[requests_before:])
                    if wamids <= set(reports[STATUS_METHODS[0]]):
                        statuses_done_at = time.time()
                        break
                    await asyncio.sleep(2.0)
                await asyncio.sleep(3.0)  # a status reported twice would show up now
            requests = (await bitrix_requests(bitrix))[requests_before:]
            reports = status_reports(requests)
        finally:
            sampler.cancel()
            await monitor.stop()
        webhooks = await graph_webhook_attempts(graph, since=t_burst)
        profiled = await profiles.collect()
        breakdown: dict[str, Any] = {}
        try:  # diagnostics: where a send's time goes (meta dispatcher) and what the mapper answered
            disp = await scrape(sut.client("meta_dispatcher"), "/metrics")
            breakdown["event_handle"] = histogram_means(disp, "zaptrix_event_handle_seconds", by="topic")
            breakdown["external_calls"] = histogram_means(disp, "zaptrix_external_api_seconds", by="method")
            breakdown["pacing_wait"] = histogram_means(disp, "zaptrix_meta_pacing_wait_seconds", by="limiter")
            mapper = await scrape(sut.client("mapper_metrics"), "/metrics")
            breakdown["mapper_rpcs"] = histogram_means(mapper, "zaptrix_mapper_rpc_seconds", by="method")
        except Exception as exc:
            breakdown["error"] = repr(exc)

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
    status_figures: dict[str, Any] = {}
    statuses_ok = True
    if WITH_STATUSES:
        for method in STATUS_METHODS:
            got = reports[method]
            short = method.rsplit(".", 1)[-1]
            status_figures[short] = {
                "messages": len(wamids & set(got)),
                "missing": len(wamids - set(got)),
                "twice": sum(1 for w in wamids if got.get(w, 0) > 1),
            }
            statuses_ok = statuses_ok and not (
                status_figures[short]["missing"] or status_figures[short]["twice"]
            )
        http = [r for r in requests if r.get("via") != "batch"]
        http_per_s = Counter(int(float(r["at"])) for r in http)
        status_figures["http_requests"] = len(http)
        status_figures["refused_query_limit"] = sum(
            1 for r in http if r.get("error") == "QUERY_LIMIT_EXCEEDED"
        )
        status_figures["max_requests_in_a_second"] = max(http_per_s.values()) if http_per_s else 0
        status_figures["status_calls"] = sum(1 for r in requests if r.get("method") in STATUS_METHODS)
        status_figures["all_reported_after_last_send_s"] = (
            round(statuses_done_at - sends_done_at, 1) if statuses_done_at else None
        )  # as the harness saw it (it polls every 2 s and waits 3 s for sends twice first): not the figure
        # Each reply's delivery at Bitrix24 (the first status request that carried it) after its send.
        first_delivery = first_report_at(requests, STATUS_METHODS[0])
        sent_at = {str(s["wamid"]): float(s["at"]) for s in accepted if s.get("wamid")}
        delays = sorted(first_delivery[w] - t for w, t in sent_at.items() if w in first_delivery)
        last_send = max(sent_at.values(), default=None)
        after_last = (
            max(first_delivery[w] for w in sent_at if w in first_delivery) - last_send
            if last_send is not None and delays
            else None
        )
        status_figures["last_delivery_after_last_send_s"] = (
            round(after_last, 2) if after_last is not None else None
        )
        status_figures["delivery_delay_s"] = {
            "p50": round(delays[len(delays) // 2], 2) if delays else None,
            "p99": round(delays[min(len(delays) - 1, int(len(delays) * 0.99))], 2) if delays else None,
            "max": round(delays[-1], 2) if delays else None,
        }
        lag = [
            (float(r["t"]), float(r["consumer_lag_all_topics"]))
            for r in timeline
            if "consumer_lag_all_topics" in r
        ]
        burst_s = (sends_done_at - t_sample) if accepted else 0.0
        during = [(t, v) for t, v in lag if 3.0 <= t - (t_burst - t_sample) and t <= burst_s]
        status_figures["consumer_lag_max"] = max((v for _, v in lag), default=None)
        status_figures["consumer_lag_slope_per_s"] = (
            round(s_, 2) if (s_ := slope(during)) is not None else None
        )
        status_figures["consumer_lag_per_s"] = [v for _, v in lag]
        offered = 3 * rate  # sent, delivered and read per accepted send
        flat_slope = FLAT_SLOPE_SHARE * offered
        status_figures["offered_status_webhooks_per_s"] = round(offered, 1)
        status_figures["flat_slope_max_per_s"] = round(flat_slope, 1)
        lag_slope = status_figures["consumer_lag_slope_per_s"]
        status_figures["backlog_flat"] = (
            lag_slope is not None
            and lag_slope <= flat_slope
            and after_last is not None
            and after_last <= STATUS_AFTER_LAST_SEND_S
        )
        statuses_ok = (
            statuses_ok and status_figures["refused_query_limit"] == 0 and status_figures["backlog_flat"]
        )
    passed = (
        share >= TARGET_SHARE
        and throughput_errors == 0
        and not missing
        and not twice
        and len(accepted) == REPLIES
        and statuses_ok
    )
    res.verdict = verdict(passed)
    res.figure = (
        f"{rate:.1f} msg/s = {share:.1%} of {CONFIGURED_MPS:g} (first→last accepted send; {from_burst:.1f}/s from the "
        f"burst); 130429: {throughput_errors}; other refusals: {sum(codes.values()) - throughput_errors}; "
        f"sent {len(accepted)} of {REPLIES} (missing {len(missing)}, twice {len(twice)}); drained in "
        f"{(accepted[-1]['at'] - t_burst) if accepted else float('nan'):.1f} s"
    )
    if WITH_STATUSES:
        d, r = status_figures["delivery"], status_figures["reading"]
        res.figure += (
            f"; statuses at Bitrix24: delivered {d['messages']}/{len(wamids)} (missing {d['missing']}, twice "
            f"{d['twice']}), read calls for {r['messages']} (twice {r['twice']}) in "
            f"{status_figures['status_calls']} status calls, {status_figures['http_requests']} HTTP requests "
            f"(max {status_figures['max_requests_in_a_second']} in a second, refused "
            f"{status_figures['refused_query_limit']}); last delivery at Bitrix24 "
            f"{status_figures['last_delivery_after_last_send_s']} s after the last send (≤ "
            f"{STATUS_AFTER_LAST_SEND_S:g}; per reply p50 {status_figures['delivery_delay_s']['p50']} s, p99 "
            f"{status_figures['delivery_delay_s']['p99']} s); bitrix dispatcher lag max "
            f"{status_figures['consumer_lag_max']}, slope {status_figures['consumer_lag_slope_per_s']}/s (≤ "
            f"{status_figures['flat_slope_max_per_s']}: {FLAT_SLOPE_SHARE:.0%} of "
            f"{status_figures['offered_status_webhooks_per_s']}/s offered): backlog "
            f"{'flat' if status_figures['backlog_flat'] else 'NOT flat'}"
        )
    else:
        res.figure += " (status webhooks OFF)"
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
        else "to a closed port, no retries (BENCH_OUTBOUND_STATUSES=0)",
        "statuses_at_bitrix24": status_figures,
        "breakdown": breakdown,
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
            "sent to meta-ingress (sent, delivered, read per reply), reported to Bitrix24 at its 2 req/s"
            if WITH_STATUSES
            else "switched off during the burst (BENCH_OUTBOUND_STATUSES=0: closed port, no retries)"
        )
    )
    res.notes += profile_notes(profiled)
    res.notes.append(
        f"opening {len(wa_ids)} conversations through the real inbound path took {setup_s:.1f} s"
    )
    return res
