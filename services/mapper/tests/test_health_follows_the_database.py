"""The production wiring (mapper.server.run → zaptrix.grpcserver.serve) in this process.

Readiness ("" and zaptrix.v1.Mapper) waits for the database once, at start-up; after that a database outage
shows in the "postgres" health status and zaptrix_dependency_up, and the mapper stays in rotation answering
UNAVAILABLE (a classified, fast answer its callers' degraded modes act on) instead of emptying its Service."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mapper import migrate
from mapper.server import run
from mapper.settings import MapperSettings
from mapper_support import db_settings, expect_code
from prometheus_client import REGISTRY
from zaptrix.v1 import mapper_pb2 as pb
from zaptrix.v1 import mapper_pb2_grpc
from zaptrix_testing.ports import free_port

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@asynccontextmanager
async def running(dsn: str) -> AsyncIterator[grpc.aio.Channel]:
    port = free_port()
    settings = MapperSettings(grpc_port=port, metrics_port=0, health_period_s=0.1, shutdown_grace_s=1)
    stopped = asyncio.Event()
    task = asyncio.create_task(run(settings, db_settings(dsn, acquire_timeout_s=0.5), stopped))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        await asyncio.wait_for(channel.channel_ready(), 10)
        yield channel
    finally:
        await channel.close()
        stopped.set()
        await asyncio.wait_for(task, 10)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # serve() installed them on the test's loop
            loop.remove_signal_handler(sig)


async def wait_for_status(channel: grpc.aio.Channel, want: int, service: str = "") -> None:
    health = health_pb2_grpc.HealthStub(channel)
    got = None
    for _ in range(100):
        try:
            got = (await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)).status
        except grpc.aio.AioRpcError:
            got = None  # not registered yet
        if got == want:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"health of {service!r} stayed {got}, wanted {want}")


def rpc_count(method: str, code: str) -> float:
    return REGISTRY.get_sample_value("zaptrix_mapper_rpcs_total", {"method": method, "code": code}) or 0.0


async def admin(pg_server_url: str, statement: str) -> None:
    conn = await asyncpg.connect(pg_server_url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def test_stays_serving_while_the_database_goes_away(migrated_db: str, pg_server_url: str) -> None:
    async with running(migrated_db) as channel:
        await wait_for_status(channel, SERVING)
        await wait_for_status(channel, SERVING, "zaptrix.v1.Mapper")
        await wait_for_status(channel, SERVING, "postgres")
        stub = mapper_pb2_grpc.MapperStub(channel)
        ok_before = rpc_count("ListChannels", "OK")
        await stub.ListChannels(pb.ListChannelsRequest())
        assert rpc_count("ListChannels", "OK") == ok_before + 1

        await admin(pg_server_url, f'DROP DATABASE "{migrated_db.rsplit("/", 1)[1]}" WITH (FORCE)')
        await wait_for_status(channel, NOT_SERVING, "postgres")
        assert REGISTRY.get_sample_value("zaptrix_dependency_up", {"dependency": "postgres"}) == 0.0
        await wait_for_status(channel, SERVING)  # still in rotation: readiness is not the database's
        await wait_for_status(channel, SERVING, "zaptrix.v1.Mapper")
        unavailable_before = rpc_count("ListChannels", "UNAVAILABLE")
        await expect_code(stub.ListChannels(pb.ListChannelsRequest()), grpc.StatusCode.UNAVAILABLE)
        assert rpc_count("ListChannels", "UNAVAILABLE") == unavailable_before + 1


async def test_starts_not_serving_and_connects_once_the_database_exists(pg_server_url: str) -> None:
    # The database does not exist yet (as when the mapper starts before PostgreSQL is restored): the
    # server still starts, reports NOT_SERVING, answers UNAVAILABLE, and keeps trying in the background.
    name = f"zt_late_{uuid.uuid4().hex[:8]}"
    dsn = f"{pg_server_url.rpartition('/')[0]}/{name}"
    try:
        async with running(dsn) as channel:
            await wait_for_status(channel, NOT_SERVING)  # never reached its database: not ready yet
            await wait_for_status(channel, NOT_SERVING, "postgres")
            stub = mapper_pb2_grpc.MapperStub(channel)
            await expect_code(
                stub.GetChannel(pb.GetChannelRequest(phone_number_id="1")), grpc.StatusCode.UNAVAILABLE
            )
            await admin(pg_server_url, f'CREATE DATABASE "{name}"')
            await migrate.upgrade(dsn)
            await wait_for_status(channel, SERVING)
            await expect_code(
                stub.GetChannel(pb.GetChannelRequest(phone_number_id="1")), grpc.StatusCode.NOT_FOUND
            )
    finally:
        await admin(pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
