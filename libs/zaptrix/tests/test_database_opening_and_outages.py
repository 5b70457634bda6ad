"""The one database runtime of mapper and token-keeper: background open, bounded acquire, one outage error."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import asyncpg
import pytest
from zaptrix.database import Database, DatabaseUnavailable, SchemaMissing
from zaptrix.errors import TransientError
from zaptrix.settings import DatabaseSettings


def _settings(dsn: str, **overrides: object) -> DatabaseSettings:
    return DatabaseSettings(**{"url": dsn, "pool_min_size": 1, "pool_max_size": 2, **overrides})


def _refused_dsn() -> str:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"postgresql://u:p@127.0.0.1:{port}/db"


async def test_before_the_pool_opens_every_call_is_unavailable() -> None:
    db = Database(_settings(_refused_dsn()), application_name="test")
    with pytest.raises(TransientError, match="not connected yet") as err:  # the shared vocabulary
        async with db.connection():
            pass
    assert isinstance(err.value, DatabaseUnavailable) and err.value.reason == "database not connected yet"
    assert await db.ping() is False


async def test_an_unreachable_database_is_one_unavailable_error_after_the_deadline() -> None:
    db = Database(_settings(_refused_dsn()), application_name="test", connect_timeout_s=1)
    with pytest.raises(DatabaseUnavailable, match="unreachable") as err:
        await db.open_until_ready(within_s=0.6)
    assert isinstance(err.value.__cause__, OSError)
    assert db.pool is None


async def test_opening_stops_quietly_on_shutdown() -> None:
    db = Database(_settings(_refused_dsn()), application_name="test", connect_timeout_s=1)
    stopped = asyncio.Event()
    stopped.set()
    await db.open_until_ready(stopped)  # returns instead of retrying forever
    assert db.pool is None


async def test_an_unmigrated_schema_is_refused_at_once(fresh_database: Callable[[], Awaitable[str]]) -> None:
    dsn = await fresh_database()
    db = Database(
        _settings(dsn), application_name="test", required_table="svc.t", migrate_command="svc-migrate"
    )
    with pytest.raises(SchemaMissing, match="run `svc-migrate` first"):
        await db.open_until_ready()  # not an outage: no retrying
    assert db.pool is None
    await _sql(dsn, "CREATE SCHEMA svc; CREATE TABLE svc.t (x int)")
    await db.open_until_ready()
    assert await db.ping()
    await db.close()


async def test_outages_inside_a_call_become_unavailable_and_bugs_pass_unchanged(
    fresh_database: Callable[[], Awaitable[str]], pg_server_url: str
) -> None:
    dsn = await fresh_database()
    db = Database(_settings(dsn, statement_timeout_ms=100), application_name="test")
    await db.open_until_ready()
    try:
        with pytest.raises(DatabaseUnavailable, match="QueryCanceledError"):
            async with db.connection() as conn:
                await conn.execute("SELECT pg_sleep(5)")
        with pytest.raises(asyncpg.UndefinedTableError):
            async with db.connection() as conn:
                await conn.execute("SELECT * FROM no_such_table")

        # The fresh-clone `make test` failure: SQLSTATE 55000 while the database refuses connections.
        name = dsn.rsplit("/", 1)[1]
        await _sql(pg_server_url, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await _sql(
            pg_server_url, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        )
        try:
            with pytest.raises(DatabaseUnavailable):
                async with db.connection() as conn:
                    await conn.fetchval("SELECT 1")
            assert await db.ping() is False
        finally:
            await _sql(pg_server_url, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        assert await db.ping()
    finally:
        await db.close()


async def test_an_exhausted_pool_is_unavailable_within_the_acquire_timeout(
    fresh_database: Callable[[], Awaitable[str]],
) -> None:
    dsn = await fresh_database()
    db = Database(_settings(dsn, pool_max_size=1, acquire_timeout_s=0.2), application_name="test")
    await db.open_until_ready()
    try:
        async with db.connection():
            with pytest.raises(DatabaseUnavailable, match="TimeoutError"):
                async with db.connection():
                    pass
    finally:
        await db.close()


async def _sql(dsn: str, query: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(query)
    finally:
        await conn.close()
