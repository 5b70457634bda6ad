"""Micro-benchmark: CPU per signed webhook in meta-ingress's handler path, without HTTP.

What the `ingress` scenario's figure is made of, minus Sanic's parsing and writing: the SERVER span and
metrics of zaptrix.web, the signature check, parse, normalize, the PRODUCER span and an acks=all publish
to a real Kafka (ZAPTRIX_TEST_KAFKA, a throw-away topic). Credentials come from a stub (no token-keeper).
CPU is this process's time (time.process_time), so a busy machine inflates it less than wall time does.

    uv run --frozen --no-sync python -m bench.ingress_cpu [--concurrency 32] [--count 6000] [--gc serving]
        [--linger-ms 2]

Used to choose the levers in docs/benchmarks.md ("What bounds each figure", ingress); not run by bench.sh.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import time
import uuid
from types import SimpleNamespace
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from meta_ingress.credentials import Credentials
from meta_ingress.settings import WebSettings
from meta_ingress.web import signature
from meta_ingress.web.webhooks import Webhooks
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from zaptrix.kafka.admin import ensure_topics
from zaptrix.kafka.connection import connection_kwargs
from zaptrix.kafka.producer import EventProducer
from zaptrix.lifetime import Lifetime
from zaptrix.process import run_async, tune_gc_for_serving
from zaptrix.settings import KafkaSettings
from zaptrix.telemetry import setup_telemetry
from zaptrix.web import _traced

from bench.common import SANDBOX_APP_SECRET
from bench.webhooks import customer, text_message_payload, wamid


class _Dropped(SpanExporter):
    """Spans go through the BatchSpanProcessor as in production, then nowhere."""

    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class _Credentials:
    """A warm credentials cache: every channel a hit."""

    def cached(self, pnid: str) -> Credentials:
        return Credentials(pnid, "token", SANDBOX_APP_SECRET, "verify", "waba")

    async def get(self, pnid: str) -> Credentials:
        return self.cached(pnid)

    def cached_app_secret(self, waba: str) -> str | None:
        return None


def _request(body: bytes) -> Any:
    headers = {"x-hub-signature-256": signature.sign(SANDBOX_APP_SECRET, body), "user-agent": "bench"}
    return SimpleNamespace(
        body=body,
        headers=headers,
        ctx=SimpleNamespace(),
        method="POST",
        path="/webhooks/meta",
        conn_info=None,
        stream=None,
    )


async def main(args: argparse.Namespace) -> None:
    setup_telemetry("ingress-cpu", exporter=_Dropped())
    prefix = f"microbench-{uuid.uuid4().hex[:8]}"
    kafka = KafkaSettings(
        bootstrap_servers=os.environ.get("ZAPTRIX_TEST_KAFKA", "127.0.0.1:19192"),
        topic_prefix=prefix,
        linger_ms=args.linger_ms,
    )
    hooks = Webhooks(WebSettings(), kafka, Lifetime(lambda: None))  # type: ignore[arg-type,return-value]
    await ensure_topics(kafka, [hooks.topics.main], partitions=6)
    producer = EventProducer(kafka, "ingress-cpu")
    await producer.start()
    hooks.lifetime._resources = SimpleNamespace(  # type: ignore[assignment]
        credentials=_Credentials(), producer=SimpleNamespace(producer=producer), confirmations=None
    )
    handler = _traced(hooks.receive, "/webhooks/meta", True)
    run = uuid.uuid4().hex[:6]
    bodies = [
        json.dumps(
            text_message_payload(customer(n), wamid(run, n), f"hello {n}"), separators=(",", ":")
        ).encode()
        for n in range(args.count + args.warmup)
    ]
    queue = iter(bodies)

    async def worker() -> None:
        for body in queue:
            response = await handler(_request(body))
            assert response.status == 200, response.body

    async def burst(n: int) -> None:
        nonlocal queue
        queue = iter(bodies[:n]) if n == args.warmup else iter(bodies[args.warmup :])
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))

    await burst(args.warmup)
    if args.gc == "serving":
        tune_gc_for_serving()  # what serve_web does once the server has started
    elif args.gc == "freeze":
        gc.collect()
        gc.freeze()
    elif args.gc.startswith("threshold="):
        gc.collect()
        gc.freeze()
        gc.set_threshold(int(args.gc.split("=", 1)[1]), 10, 10)
    in_gc = [0.0, 0.0]  # seconds in collections, start of the current one
    collections = [0, 0, 0]

    def count_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            in_gc[1] = time.perf_counter()
        else:
            in_gc[0] += time.perf_counter() - in_gc[1]
            collections[info["generation"]] += 1

    gc.callbacks.append(count_gc)
    cpu, wall = time.process_time(), time.perf_counter()
    await burst(args.count)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    gc.callbacks.remove(count_gc)
    print(
        f"c{args.concurrency} gc={args.gc} linger={args.linger_ms}: {args.count} webhooks, "
        f"{cpu * 1e6 / args.count:.0f} µs CPU each, {args.count / wall:.0f}/s wall; "
        f"in gc {in_gc[0] * 1e6 / args.count:.1f} µs each, collections by generation {collections}"
    )
    await producer.stop()
    admin = AIOKafkaAdminClient(**connection_kwargs(kafka))
    await admin.start()
    try:
        await admin.delete_topics([hooks.topics.main])
    finally:
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--count", type=int, default=6000)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument(
        "--gc", default="default", help="default | serving | freeze | threshold=N (with freeze)"
    )
    parser.add_argument("--linger-ms", type=int, default=2)
    args = parser.parse_args()
    run_async(lambda: main(args))  # uvloop, as Sanic serves
