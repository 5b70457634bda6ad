"""Support code of the mapper's tests (imported by conftest.py and the tests; the name is unique in the repo)."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import pytest
from mapper.service import MapperService
from zaptrix.database import Database
from zaptrix.settings import DatabaseSettings
from zaptrix.v1 import mapper_pb2 as pb


def db_settings(dsn: str, **overrides: Any) -> DatabaseSettings:
    return DatabaseSettings(**{"url": dsn, "pool_min_size": 1, "pool_max_size": 10, **overrides})


async def sql(dsn: str, query: str, *args: Any) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


@dataclass
class Mapper:
    stub: Any  # MapperAsyncStub
    service: MapperService
    db: Database
    dsn: str

    async def sql(self, query: str, *args: Any) -> Any:
        """Talk to PostgreSQL behind the service's back (as another replica or an operator would)."""
        return await sql(self.dsn, query, *args)

    async def bind(
        self, phone_number_id: str = "1001", member_id: str = "portal-a", **fields: Any
    ) -> pb.Channel:
        channel = pb.Channel(
            phone_number_id=phone_number_id,
            display_phone_number=fields.pop("display_phone_number", "+1 555 0100"),
            member_id=member_id,
            line_id=fields.pop("line_id", 7),
            connector_id=fields.pop("connector_id", "zaptrix_whatsapp"),
            active=fields.pop("active", True),
            **fields,
        )
        return await self.stub.BindChannel(pb.BindChannelRequest(channel=channel))

    async def conversation(
        self, phone_number_id: str = "1001", wa_id: str = "15550001111"
    ) -> pb.Conversation:
        response = await self.stub.GetOrCreateConversation(
            pb.GetOrCreateConversationRequest(phone_number_id=phone_number_id, wa_id=wa_id)
        )
        return response.conversation


async def expect_code(call: Awaitable[Any], code: grpc.StatusCode) -> str:
    """Await a call that must fail with `code`; returns the status details."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    return str(info.value.details())
