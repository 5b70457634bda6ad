"""Fixtures of the mapper's tests: a migrated database per test, the servicer behind a real grpc.aio server.

Needs ZAPTRIX_TEST_PG_URL (real PostgreSQL, see the root conftest.py).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from zaptrix.v1 import mapper_pb2_grpc

sys.path.insert(0, str(Path(__file__).parent))  # mapper_support (pytest runs with --import-mode=importlib)

from mapper import migrate
from mapper.repository import Repository
from mapper.service import MapperService
from mapper.servicer import MapperServicer
from mapper.settings import MapperSettings
from mapper_support import Mapper, db_settings
from zaptrix.database import Database


@pytest.fixture
async def migrated_db(fresh_database: Callable[[], Awaitable[str]]) -> str:
    dsn = await fresh_database()
    await migrate.upgrade(dsn)
    return dsn


@pytest.fixture
def mapper_settings() -> MapperSettings:
    return MapperSettings(channel_cache_ttl_s=300, dedupe_cache_ttl_s=300)


@pytest.fixture
async def mapper(migrated_db: str, mapper_settings: MapperSettings) -> AsyncIterator[Mapper]:
    # A warm pool: concurrent calls really run concurrently in PostgreSQL (no request waits to connect).
    db = Database(
        db_settings(migrated_db, pool_min_size=10), connect_timeout_s=5, application_name="mapper-test"
    )
    await db.open()
    service = MapperService(Repository(db), mapper_settings)
    server = grpc.aio.server()
    mapper_pb2_grpc.add_MapperServicer_to_server(MapperServicer(service), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Mapper(mapper_pb2_grpc.MapperStub(channel), service, db, migrated_db)
    finally:
        await channel.close()
        await server.stop(None)
        await db.close()
