"""Fixtures of zaptrix-admin's tests: a migrated mapper database and the Mapper servicer on it (to seed
through the real RPCs), the commands run in-process against the same database."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from mapper import migrate
from mapper.repository import Repository
from mapper.service import MapperService
from mapper.servicer import MapperServicer
from mapper.settings import MapperSettings
from zaptrix.database import Database
from zaptrix.settings import DatabaseSettings
from zaptrix.v1 import mapper_pb2_grpc

sys.path.insert(0, str(Path(__file__).parent))  # admin_support (pytest runs with --import-mode=importlib)

from admin_support import Seeded


@pytest.fixture
async def mapper_db(
    fresh_database: Callable[[], Awaitable[str]], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Seeded]:
    dsn = await fresh_database()
    await migrate.upgrade(dsn)
    monkeypatch.setenv("ZAPTRIX_MAPPER_DATABASE_URL", dsn)
    db = Database(DatabaseSettings(url=dsn), connect_timeout_s=5, application_name="admin-test")
    await db.open()
    server = grpc.aio.server()
    mapper_pb2_grpc.add_MapperServicer_to_server(
        MapperServicer(MapperService(Repository(db), MapperSettings())), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Seeded(mapper_pb2_grpc.MapperStub(channel), dsn)
    finally:
        await channel.close()
        await server.stop(None)
        await db.close()
