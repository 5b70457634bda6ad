"""Database trouble and bugs become clear status codes: UNAVAILABLE (retry) or INTERNAL, never UNKNOWN."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import grpc
import pytest
from mapper.metrics import RPCS
from mapper.repository import Repository
from mapper.service import MapperService
from mapper.servicer import MapperServicer
from mapper.settings import MapperSettings
from mapper_support import db_settings, expect_code
from zaptrix.database import Database
from zaptrix.v1 import mapper_pb2 as pb
from zaptrix.v1 import mapper_pb2_grpc


@asynccontextmanager
async def serving(dsn: str, **db: Any) -> AsyncIterator[tuple[Any, MapperService]]:
    database = Database(db_settings(dsn, **db), connect_timeout_s=5, application_name="mapper-test")
    await database.open()
    service = MapperService(Repository(database), MapperSettings())
    server = grpc.aio.server()
    mapper_pb2_grpc.add_MapperServicer_to_server(MapperServicer(service), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield mapper_pb2_grpc.MapperStub(channel), service
    finally:
        await channel.close()
        await server.stop(None)
        await database.close()


async def test_an_exhausted_pool_answers_unavailable_after_the_acquire_timeout(migrated_db: str) -> None:
    async with serving(migrated_db, pool_min_size=1, pool_max_size=1, acquire_timeout_s=0.2) as (
        stub,
        service,
    ):
        async with service.repo.db.connection():  # the only connection is busy
            started = asyncio.get_running_loop().time()
            await expect_code(
                stub.GetChannel(pb.GetChannelRequest(phone_number_id="1")), grpc.StatusCode.UNAVAILABLE
            )
            assert asyncio.get_running_loop().time() - started < 2
        await expect_code(
            stub.GetChannel(pb.GetChannelRequest(phone_number_id="1")), grpc.StatusCode.NOT_FOUND
        )


async def test_the_statement_timeout_applies_and_answers_unavailable(migrated_db: str) -> None:
    async with serving(migrated_db, statement_timeout_ms=100) as (stub, _):
        channel = pb.Channel(phone_number_id="1", member_id="p", line_id=1, connector_id="c", active=True)
        await stub.BindChannel(pb.BindChannelRequest(channel=channel))
        blocker = await asyncpg.connect(migrated_db)
        try:
            async with blocker.transaction():  # an operator holding the row in psql
                await blocker.execute(
                    "SELECT 1 FROM mapper.channel_binding WHERE phone_number_id = '1' FOR UPDATE"
                )
                await expect_code(
                    stub.BindChannel(pb.BindChannelRequest(channel=channel)), grpc.StatusCode.UNAVAILABLE
                )
        finally:
            await blocker.close()
        assert (await stub.BindChannel(pb.BindChannelRequest(channel=channel))).phone_number_id == "1"


async def test_a_bug_is_internal_and_counted(migrated_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with serving(migrated_db) as (stub, service):

        async def broken(*_: object) -> None:
            raise RuntimeError("boom")

        monkeypatch.setattr(service, "list_channels", broken)
        counter = RPCS.labels("ListChannels", "INTERNAL")  # the service's own counter object
        before = counter._value.get()
        details = await expect_code(stub.ListChannels(pb.ListChannelsRequest()), grpc.StatusCode.INTERNAL)
        assert details == "internal error"  # no internals leak to the caller
        assert counter._value.get() == before + 1
