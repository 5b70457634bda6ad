"""Migrations: concurrent runs, a least-privilege role owning a pre-created schema (docs/deploy.md), downgrade."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
from pydantic import SecretStr
from tk_support import make_settings, new_keyring, server_env
from token_keeper import migrate
from token_keeper.model import ChannelUpsert
from token_keeper.oauth import BitrixOAuthClient
from token_keeper.repository import Repository, database
from token_keeper.service import TokenService
from zaptrix.settings import DatabaseSettings
from zaptrix_testing.processes import console_script


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'token_keeper'")
        return {r["tablename"] for r in rows}
    finally:
        await conn.close()


async def test_concurrent_runs_and_downgrade(fresh_database: Callable[[], Awaitable[str]]) -> None:
    url = await fresh_database()
    env = server_env(url, "https://oauth.bitrix.info/oauth/token/", None)
    procs = [
        await asyncio.create_subprocess_exec(
            console_script("token-keeper-migrate"),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        for _ in range(2)
    ]
    outs = await asyncio.gather(*(p.communicate() for p in procs))
    assert [p.returncode for p in procs] == [0, 0], outs  # advisory lock: no duplicate DDL errors
    assert sum(b"Running upgrade  -> 0001" in o for o, _ in outs) == 1
    assert await _tables(url) == {"alembic_version", "portal_config", "channel_credentials"}
    await migrate.MIGRATIONS.downgrade(url, "base")
    assert await _tables(url) == {"alembic_version"}
    await migrate.upgrade(url)
    assert await _tables(url) == {"alembic_version", "portal_config", "channel_credentials"}


async def test_least_privilege_role_with_precreated_schema(
    fresh_database: Callable[[], Awaitable[str]], pg_server_url: str
) -> None:
    admin_url = await fresh_database()
    role = f"tk_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'")
        await admin.execute(f"CREATE SCHEMA token_keeper AUTHORIZATION {role}")
        await admin.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
        await admin.execute(f"REVOKE CREATE ON DATABASE {admin_url.rsplit('/', 1)[1]} FROM PUBLIC")
        host = admin_url.split("@", 1)[1]
        url = f"postgresql://{role}:pw@{host}"
        await migrate.upgrade(url)
        await migrate.upgrade(url)  # idempotent
        assert await _tables(url) == {"alembic_version", "portal_config", "channel_credentials"}
        db = database(DatabaseSettings(url=url, pool_min_size=1, pool_max_size=2), "token-keeper-test")
        await db.open()
        settings = make_settings("https://oauth.bitrix.info/oauth/token/")
        oauth = BitrixOAuthClient(settings)
        try:
            svc = TokenService(db, Repository(new_keyring("k1")[0]), oauth, settings)
            await svc.upsert_channel(ChannelUpsert("42", verify_token=SecretStr("vt")))
            assert await svc.check_verify_token("vt")
        finally:
            await oauth.aclose()
            await db.close()
    finally:
        await admin.execute("DROP SCHEMA IF EXISTS token_keeper CASCADE")
        await admin.execute(f"DROP OWNED BY {role}")
        await admin.close()
        server = await asyncpg.connect(pg_server_url)
        try:
            await server.execute(f"DROP ROLE IF EXISTS {role}")
        finally:
            await server.close()
