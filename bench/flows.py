"""Load helpers shared by the end-to-end scenarios: paced (open-loop) webhook senders, and reading what
the stand-ins received."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from zaptrix_testing.seeding import chat_customer

from bench.common import SANDBOX_MEMBER_ID, SystemUnderTest, metric_sum, scrape
from bench.httpclient import Pool
from bench.webhooks import customer, sample_text, signed_text_webhook, wamid

WAMID_RE = re.compile(r"wamid\.BENCH[0-9a-f]+X\d{7}")


@dataclass
class Sent:
    wamid: str
    wa_id: str
    scheduled_at: float  # time.time() the schedule said
    sent_at: float = 0.0  # time.time() just before the request was written
    status: int | None = None
    error: str | None = None
    answered_at: float = 0.0


@dataclass
class SendReport:
    items: list[Sent] = field(default_factory=list)
    started_at: float = 0.0
    finished_at: float = 0.0

    @property
    def ok(self) -> list[Sent]:
        return [s for s in self.items if s.status == 200]

    def summary(self) -> dict[str, Any]:
        statuses: dict[str, int] = defaultdict(int)
        for s in self.items:
            statuses[str(s.status) if s.status is not None else (s.error or "error")[:60]] += 1
        lag = [max(0.0, s.sent_at - s.scheduled_at) for s in self.items if s.sent_at]
        ack = [s.answered_at - s.sent_at for s in self.items if s.status == 200]
        span = max(self.finished_at - self.started_at, 1e-9)
        return {
            "sent": len(self.items),
            "answers": dict(statuses),
            "offered_rate_per_s": round(len(self.items) / span, 1),
            "max_schedule_lag_ms": round(max(lag) * 1000, 1) if lag else None,
            "webhook_ack_p99_ms": round(sorted(ack)[int(0.99 * (len(ack) - 1))] * 1000, 1) if ack else None,
        }


def plan_messages(run: str, count: int, customers: int, first: int = 0, customer_base: int = 0) -> list[Sent]:
    """`count` text messages round-robin over `customers` customers; wamid numbers from `first`."""
    return [Sent(wamid(run, first + i), customer(customer_base + (i % customers)), 0.0) for i in range(count)]


async def send_paced(
    port: int,
    items: Sequence[Sent],
    rate_per_s: float,
    connections: int = 32,
    concurrency_cap: int = 256,
    bodies: Sequence[tuple[bytes, str]] | None = None,
) -> SendReport:
    """Open loop: message i is due at t0 + i / rate, whatever the answers of earlier ones. Each signed
    webhook goes straight to meta-ingress's POST /webhooks/meta (what Meta does). `bodies`: the signed
    webhooks (body, signature) of the items, when not the sandbox number's text messages."""
    pool = Pool("127.0.0.1", port, size=connections)
    report = SendReport(list(items))
    signed = (
        bodies
        if bodies is not None
        else [signed_text_webhook(s.wa_id, s.wamid, sample_text(i)) for i, s in enumerate(items)]
    )
    inflight = asyncio.Semaphore(concurrency_cap)
    tasks: list[asyncio.Task[None]] = []

    async def one(i: int) -> None:
        s = items[i]
        body, sig = signed[i]
        try:
            status, _, sent_at = await pool.post(
                "/webhooks/meta",
                body,
                {
                    "Content-Type": "application/json",
                    "X-Hub-Signature-256": sig,
                    "User-Agent": "facebookexternalua",
                },
            )
            s.sent_at, s.status = sent_at, status
        except Exception as exc:
            s.error = f"{type(exc).__name__}: {exc}"
            s.sent_at = s.sent_at or time.time()
        finally:
            s.answered_at = time.time()
            inflight.release()

    try:
        t0 = time.time() + 0.05
        report.started_at = t0
        for i, s in enumerate(items):
            s.scheduled_at = t0 + i / rate_per_s
            delay = s.scheduled_at - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await inflight.acquire()
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        report.finished_at = time.time()
    finally:
        for t in tasks:
            t.cancel()
        await pool.close()
    return report


async def send_burst(port: int, items: Sequence[Sent], connections: int = 16) -> SendReport:
    """As fast as `connections` parallel senders go (used to open conversations before a measurement)."""
    return await send_paced(port, items, rate_per_s=1e9, connections=connections, concurrency_cap=connections)


# ---- the Bitrix24 stand-in ---------------------------------------------------------------------------------


async def bitrix_requests(
    client: httpx.AsyncClient, member_id: str = SANDBOX_MEMBER_ID
) -> list[dict[str, Any]]:
    resp = await client.get(f"/_sandbox/portals/{member_id}/requests", timeout=60)
    resp.raise_for_status()
    return list(resp.json()["requests"])


async def bitrix_stats(client: httpx.AsyncClient, member_id: str = SANDBOX_MEMBER_ID) -> dict[str, Any]:
    resp = await client.get(f"/_sandbox/portals/{member_id}/stats", timeout=30)
    resp.raise_for_status()
    return dict(resp.json()["stats"])


async def bitrix_config(client: httpx.AsyncClient, **options: Any) -> None:
    resp = await client.post("/_sandbox/config", json=options, timeout=30)
    resp.raise_for_status()


def deliveries(requests: list[dict[str, Any]]) -> dict[str, list[float]]:
    """wamid → the "at" of every successful imconnector.send.messages call that carried it (direct or as a
    batch sub-call; the batch request itself is not counted, its sub-calls are)."""
    out: dict[str, list[float]] = defaultdict(list)
    for r in requests:
        if r.get("method") != "imconnector.send.messages" or r.get("status") != 200:
            continue
        params = r.get("params")
        text = params if isinstance(params, str) else json.dumps(params)
        for w in set(WAMID_RE.findall(text)):
            out[w].append(float(r["at"]))
    return out


STATUS_METHODS = ("imconnector.send.status.delivery", "imconnector.send.status.reading")
GRAPH_WAMID_RE = re.compile(
    r"wamid\.HBgL[A-Za-z0-9]{32}"
)  # the Graph stand-in's wamids (graph_state.new_wamid)


def status_reports(requests: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """method → wamid → how many successful status calls (direct or as a batch sub-call) carried it."""
    out: dict[str, dict[str, int]] = {m: defaultdict(int) for m in STATUS_METHODS}
    for r in requests:
        if r.get("method") not in STATUS_METHODS or r.get("status") != 200:
            continue
        params = r.get("params")
        text = params if isinstance(params, str) else json.dumps(params)
        for w in set(GRAPH_WAMID_RE.findall(text)):
            out[str(r["method"])][w] += 1
    return out


def request_times(requests: list[dict[str, Any]], predicate: Callable[[dict[str, Any]], bool]) -> list[float]:
    return sorted(float(r["at"]) for r in requests if predicate(r))


async def wait_delivered(
    client: httpx.AsyncClient, wamids: set[str], timeout_s: float, interval_s: float = 1.0
) -> tuple[dict[str, list[float]], list[dict[str, Any]], bool]:
    """Polls the Bitrix24 stand-in's request log until every wamid arrived (or the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        requests = await bitrix_requests(client)
        got = deliveries(requests)
        if wamids <= got.keys():
            return got, requests, True
        if time.monotonic() > deadline:
            return got, requests, False
        await asyncio.sleep(interval_s)


async def chat_message_counts(
    client: httpx.AsyncClient, member_id: str = SANDBOX_MEMBER_ID
) -> dict[str, int]:
    """wamid → how many client messages in the Open Lines chats carry it (2+ = a duplicate reached the
    operator)."""
    resp = await client.get(f"/_sandbox/portals/{member_id}/chats", timeout=60)
    resp.raise_for_status()
    counts: dict[str, int] = defaultdict(int)
    for chat in resp.json()["chats"]:
        for m in chat["messages"]:
            if m.get("direction") != "client":
                continue
            for ext in m.get("external_ids") or []:
                if WAMID_RE.fullmatch(str(ext)):
                    counts[str(ext)] += 1
    return counts


__all__ = ["customer", "wamid"]


# ---- opening conversations through the Graph stand-in (customers write first) -------------------------------


async def bitrix_chats(client: httpx.AsyncClient, member_id: str = SANDBOX_MEMBER_ID) -> list[dict[str, Any]]:
    resp = await client.get(f"/_sandbox/portals/{member_id}/chats", timeout=60)
    resp.raise_for_status()
    return list(resp.json()["chats"])


async def open_conversations(
    graph: httpx.AsyncClient,
    bitrix: httpx.AsyncClient,
    wa_ids: Sequence[str],
    phone_number_id: str,
    timeout_s: float = 120.0,
    chunk: int = 50,
) -> dict[str, dict[str, Any]]:
    """Every customer writes once through the Graph stand-in's simulator (POST /_sandbox/webhooks, `chunk`
    messages per signed webhook: this also opens their 24-hour window there), then waits until the
    Bitrix24 stand-in has an Open Lines chat for each. Returns wa_id → chat (as GET .../chats shows it)."""
    sem = asyncio.Semaphore(4)

    async def post(part: Sequence[str]) -> None:
        async with sem:
            body = {
                "layout": "messages",
                "messages": [
                    {"wa_id": w, "text": "Hallo, ich habe eine Frage.", "name": "Bench Customer"}
                    for w in part
                ],
            }
            resp = await graph.post("/_sandbox/webhooks", json=body, timeout=60)
            resp.raise_for_status()
            status = resp.json().get("gateway_status")
            if status != 200:
                raise RuntimeError(f"meta-ingress answered {status} to the Graph stand-in's webhook")

    started = time.monotonic()
    await asyncio.gather(*(post(wa_ids[i : i + chunk]) for i in range(0, len(wa_ids), chunk)))
    # Chat ids are opaque (random): a chat is recognised by its customer (the stand-in's user id is the wa_id).
    wanted = set(wa_ids)
    deadline = time.monotonic() + timeout_s
    shown = 0.0
    while True:
        chats = await bitrix_chats(bitrix)
        found = {chat_customer(c): c for c in chats if chat_customer(c) in wanted}
        if len(found) == len(wanted):
            print(f"  {len(found)} conversations open after {time.monotonic() - started:.1f} s", flush=True)
            return found
        if time.monotonic() - shown > 10:
            shown = time.monotonic()
            print(
                f"  opening conversations: {len(found)}/{len(wanted)} after {shown - started:.0f} s",
                flush=True,
            )
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {len(found)} of {len(wanted)} conversations reached the Bitrix24 stand-in in {timeout_s:.0f} s"
            )
        await asyncio.sleep(1.0)


async def graph_sent(graph: httpx.AsyncClient) -> list[dict[str, Any]]:
    resp = await graph.get("/_sandbox/sent", timeout=60)
    resp.raise_for_status()
    return list(resp.json()["sent"])


async def graph_config(graph: httpx.AsyncClient, **options: Any) -> dict[str, Any]:
    resp = await graph.post("/_sandbox/config", json=options, timeout=30)
    resp.raise_for_status()
    return dict(resp.json())


async def graph_webhook_attempts(graph: httpx.AsyncClient, since: float = 0.0) -> dict[str, Any]:
    """How meta-ingress answered the Graph stand-in's webhooks (status webhooks after sends, customer
    messages): attempts, answers by status, and the stand-in's own measure of each attempt's duration."""
    resp = await graph.get("/_sandbox/webhooks", timeout=60)
    resp.raise_for_status()
    attempts = [
        a for d in resp.json()["webhooks"] for a in d.get("attempts", []) if float(a.get("at", 0)) >= since
    ]
    by_status: dict[str, int] = defaultdict(int)
    for a in attempts:
        by_status[str(a.get("status_code") or a.get("error") or "none")[:60]] += 1
    durations = sorted(float(a.get("duration_ms") or 0) for a in attempts)

    def pct(p: float) -> float | None:
        return durations[min(len(durations) - 1, int(p / 100 * len(durations)))] if durations else None

    return {
        "attempts": len(attempts),
        "answers": dict(by_status),
        "duration_ms_p50": pct(50),
        "duration_ms_p99": pct(99),
        "duration_ms_max": durations[-1] if durations else None,
    }


async def sample_backlog(sut: SystemUnderTest, out: list[dict[str, Any]], t0: float) -> None:
    bitrix = sut.client("bitrix")
    disp = sut.client("bitrix_dispatcher")
    topic = sut.topic("wa-to-b24")
    while True:
        row: dict[str, Any] = {"t": round(time.time() - t0, 2)}
        with contextlib.suppress(Exception):
            samples = await scrape(disp, "/metrics")
            row["consumer_lag"] = metric_sum(samples, "zaptrix_kafka_consumer_lag", topic=topic)
            row["consumer_lag_all_topics"] = metric_sum(samples, "zaptrix_kafka_consumer_lag")
        with contextlib.suppress(Exception):
            stats = await bitrix_stats(bitrix)
            row["requests_total"] = stats["requests_total"]
            row["rate_limited_count"] = stats["rate_limited_count"]
        out.append(row)
        await asyncio.sleep(max(0.0, 1.0 - (time.time() - t0 - row["t"])))
