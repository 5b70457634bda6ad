"""Micro-benchmark of the mapper: real `mapper-server` processes, real PostgreSQL, gRPC over loopback.

Two servers run side by side on one fresh database: one with its caches (the defaults) and one with both
caches disabled. Each scenario keeps `--concurrency` calls in flight for `--seconds` and reports rps, p50 and
p99 as the client sees them (client and server share the box's CPUs).

    ZAPTRIX_TEST_PG_URL=postgresql://zaptrix:zaptrix@127.0.0.1:55439/zaptrix \\
        uv run python services/mapper/bench_mapper.py [--seconds 5] [--concurrency 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mapper import migrate
from zaptrix.v1 import mapper_pb2 as pb
from zaptrix.v1 import mapper_pb2_grpc
from zaptrix_testing.ports import free_port

CUSTOMERS = 1000
PHONE = "106540352242922"


@dataclass
class Result:
    server: str
    scenario: str
    calls: int
    rps: float
    p50_ms: float
    p99_ms: float
    server_cpu_us: float  # server process CPU time per call: comparable even on a busy box


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def start_server(dsn: str, extra_env: dict[str, str]) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    env = {
        **os.environ,
        "ZAPTRIX_DATABASE_URL": dsn,
        "ZAPTRIX_GRPC_PORT": str(port),
        "ZAPTRIX_METRICS_PORT": "0",
        "ZAPTRIX_LOG_LEVEL": "WARNING",
        **extra_env,
    }
    script = shutil.which("mapper-server", path=str(Path(sys.executable).parent))
    assert script, "mapper-server is not installed (uv sync)"
    proc = await asyncio.create_subprocess_exec(script, env=env, stdout=asyncio.subprocess.DEVNULL)
    addr = f"127.0.0.1:{port}"
    async with grpc.aio.insecure_channel(addr) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(600):
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return proc, addr
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("mapper-server did not become SERVING")


async def measure(
    name: str, server: str, pid: int, call: Callable[[int], Awaitable[Any]], seconds: float, concurrency: int
) -> Result:
    latencies: list[float] = []
    counter = itertools.count()
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            i = next(counter)
            started = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - started)

    started, cpu_before = time.perf_counter(), cpu_seconds(pid)
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - started, cpu_seconds(pid) - cpu_before
    cuts = statistics.quantiles(latencies, n=100)
    n = len(latencies)
    return Result(server, name, n, n / elapsed, cuts[49] * 1000, cuts[98] * 1000, cpu / n * 1e6)


async def seed(stub: Any) -> list[pb.Conversation]:
    await stub.BindChannel(
        pb.BindChannelRequest(
            channel=pb.Channel(
                phone_number_id=PHONE,
                member_id="bench-portal",
                line_id=1,
                connector_id="zaptrix",
                active=True,
            )
        )
    )
    conversations = []
    for i in range(CUSTOMERS):
        r = await stub.GetOrCreateConversation(
            pb.GetOrCreateConversationRequest(phone_number_id=PHONE, wa_id=f"1555{i:07d}")
        )
        conversations.append(r.conversation)
    for i in range(CUSTOMERS):
        await stub.MarkProcessed(pb.MarkProcessedRequest(event_id=f"seen-{i}", result="x"))
    return conversations


async def scenarios(
    label: str, pid: int, addr: str, conversations: list[pb.Conversation], seconds: float, concurrency: int
) -> list[Result]:
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = mapper_pb2_grpc.MapperStub(channel)
        run_id = uuid.uuid4().hex[:6]

        async def get_channel(i: int) -> None:
            await stub.GetChannel(pb.GetChannelRequest(phone_number_id=PHONE))

        async def get_or_create(i: int) -> None:
            await stub.GetOrCreateConversation(
                pb.GetOrCreateConversationRequest(phone_number_id=PHONE, wa_id=f"1555{i % CUSTOMERS:07d}")
            )

        async def find_external(i: int) -> None:
            chat = pb.PortalExternalChat(
                member_id="bench-portal", external_chat_id=conversations[i % CUSTOMERS].external_chat_id
            )
            await stub.FindConversation(pb.FindConversationRequest(portal_external_chat=chat))

        async def check_seen(i: int) -> None:
            await stub.CheckProcessed(pb.CheckProcessedRequest(event_id=f"seen-{i % CUSTOMERS}"))

        async def inbound_message(i: int) -> None:
            """What the bitrix dispatcher asks per customer message (6 RPCs)."""
            wamid = f"wamid.{label}.{run_id}.{i}"
            wa_id = f"1555{i % CUSTOMERS:07d}"
            await stub.CheckProcessed(pb.CheckProcessedRequest(event_id=wamid))
            await stub.GetChannel(pb.GetChannelRequest(phone_number_id=PHONE))
            conv = (
                await stub.GetOrCreateConversation(
                    pb.GetOrCreateConversationRequest(phone_number_id=PHONE, wa_id=wa_id)
                )
            ).conversation
            now = Timestamp()
            now.GetCurrentTime()
            await stub.UpdateConversation(
                pb.UpdateConversationRequest(id=conv.id, last_customer_message_at=now)
            )
            await stub.LinkMessage(
                pb.LinkMessageRequest(
                    link=pb.MessageLink(
                        conversation_id=conv.id,
                        wamid=wamid,
                        direction=pb.DIRECTION_INBOUND,
                        bitrix_message_id=f"{label}-{run_id}-{i}",
                    )
                )
            )
            await stub.MarkProcessed(pb.MarkProcessedRequest(event_id=wamid, result="ok"))

        plan: list[tuple[str, Callable[[int], Awaitable[None]]]] = [
            ("GetChannel", get_channel),
            ("GetOrCreateConversation (existing)", get_or_create),
            ("FindConversation (portal_external_chat)", find_external),
            ("CheckProcessed (seen)", check_seen),
            ("inbound message (6 RPCs)", inbound_message),
        ]
        await measure("warm-up", label, pid, get_or_create, 1.0, concurrency)
        return [await measure(name, label, pid, call, seconds, concurrency) for name, call in plan]


async def main_async(args: argparse.Namespace) -> list[Result]:
    admin_url: str = args.pg_url
    name = f"zt_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = f"{admin_url.rpartition('/')[0]}/{name}"
    procs: list[asyncio.subprocess.Process] = []
    try:
        await migrate.upgrade(dsn)
        cached, cached_addr = await start_server(dsn, {})
        procs.append(cached)
        uncached, uncached_addr = await start_server(
            dsn, {"ZAPTRIX_CHANNEL_CACHE_SIZE": "0", "ZAPTRIX_DEDUPE_CACHE_SIZE": "0"}
        )
        procs.append(uncached)
        async with grpc.aio.insecure_channel(cached_addr) as channel:
            conversations = await seed(mapper_pb2_grpc.MapperStub(channel))
        results = []
        for label, proc, addr in (("cached", cached, cached_addr), ("uncached", uncached, uncached_addr)):
            results += await scenarios(label, proc.pid, addr, conversations, args.seconds, args.concurrency)
        return results
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            await proc.wait()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pg-url", default=os.environ.get("ZAPTRIX_TEST_PG_URL"), help="superuser DSN")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if not args.pg_url:
        parser.error("set ZAPTRIX_TEST_PG_URL or --pg-url")
    results = asyncio.run(main_async(args))
    out = sys.stdout
    out.write(
        f"mapper benchmark: {os.cpu_count()} CPUs, concurrency {args.concurrency}, {args.seconds:g} s each\n"
    )
    out.write(
        f"{'server':<9} {'scenario':<38} {'calls':>7} {'rps':>7} {'p50 ms':>7} {'p99 ms':>7} {'server CPU/call':>15}\n"
    )
    for r in results:
        out.write(
            f"{r.server:<9} {r.scenario:<38} {r.calls:>7} {r.rps:>7.0f} {r.p50_ms:>7.2f} {r.p99_ms:>7.2f}"
            f" {r.server_cpu_us:>12.0f} us\n"
        )
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
