"""Fixtures of token-keeper's tests: a migrated database, the Bitrix24 sandbox as a real process, servers.

Needs ZAPTRIX_TEST_PG_URL (real PostgreSQL, see the root conftest.py). The sandbox (`sandbox-bitrix`) runs once
per session with the portals of tk_support.PORTALS and is reset before every test that uses it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).parent))  # tk_support (pytest runs with --import-mode=importlib)

from tk_support import PORTALS, Sandbox, Server, make_settings, new_keyring, spawn
from token_keeper import migrate
from token_keeper.crypto import Keyring
from token_keeper.oauth import BitrixOAuthClient
from token_keeper.repository import Repository, database
from token_keeper.service import TokenService
from zaptrix.database import Database
from zaptrix.settings import DatabaseSettings
from zaptrix.v1 import token_keeper_pb2_grpc
from zaptrix_testing.ports import free_port
from zaptrix_testing.processes import console_script


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """In-process CLI runs call configure_logging, binding a handler to pytest's capture stream: undo it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
async def sandbox_process(
    tmp_path_factory: pytest.TempPathFactory, processes: None
) -> AsyncIterator[Sandbox]:
    port = free_port()
    log = tmp_path_factory.mktemp("sandbox") / "sandbox.log"
    env = {
        **os.environ,
        "SANDBOX_BITRIX_HOST": "127.0.0.1",
        "SANDBOX_BITRIX_PORT": str(port),
        "SANDBOX_BITRIX_PORTALS": json.dumps(PORTALS),
    }
    proc = spawn([console_script("sandbox-bitrix")], env, log)
    sb = Sandbox(url=f"http://127.0.0.1:{port}", proc=proc)
    deadline = time.monotonic() + 20
    while True:
        try:
            if (await sb.client.get(f"{sb.url}/_sandbox/portals")).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"sandbox-bitrix did not start:\n{log.read_text()[-3000:]}")
        await asyncio.sleep(0.1)
    yield sb
    await sb.client.aclose()
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
async def sandbox(sandbox_process: Sandbox) -> Sandbox:
    await sandbox_process.reset()
    return sandbox_process


@pytest.fixture
async def db_url(fresh_database: Callable[[], Awaitable[str]]) -> str:
    url = await fresh_database()
    await migrate.upgrade(url)
    return url


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    d = database(DatabaseSettings(url=db_url, pool_min_size=1, pool_max_size=10), "token-keeper-test")
    await d.open()
    yield d
    await d.close()


@pytest.fixture
def pool(db: Database) -> asyncpg.Pool:
    assert db.pool is not None
    return db.pool


@pytest.fixture
def keyring() -> Keyring:
    return new_keyring("k1")[0]


@pytest.fixture
async def make_service(
    db: Database, sandbox: Sandbox, keyring: Keyring
) -> AsyncIterator[Callable[..., TokenService]]:
    """Factory of in-process services (each one a "replica" with its own caches) on the same database."""
    clients: list[BitrixOAuthClient] = []

    def make(
        *,
        keys: Keyring | None = None,
        oauth_url: str | None = None,
        http: httpx.AsyncClient | None = None,
        **kw: Any,
    ) -> TokenService:
        settings = make_settings(oauth_url or sandbox.oauth_url, **kw)
        oauth = BitrixOAuthClient(settings, http=http)
        clients.append(oauth)
        return TokenService(db, Repository(keys or keyring), oauth, settings)

    yield make
    for c in clients:
        await c.aclose()


@pytest.fixture
async def service(make_service: Callable[..., TokenService]) -> TokenService:
    return make_service()


@pytest.fixture
async def start_server(
    tmp_path: Path, processes: None
) -> AsyncIterator[Callable[[dict[str, str]], Awaitable[Server]]]:
    """Starts `token-keeper-server` subprocesses (env from tk_support.server_env); waits until SERVING."""
    servers: list[Server] = []

    async def start(env: dict[str, str]) -> Server:
        port, mport = free_port(), free_port()
        log = tmp_path / f"token-keeper-{port}.log"
        env = {**env, "ZAPTRIX_GRPC_PORT": str(port), "ZAPTRIX_METRICS_PORT": str(mport)}
        proc = spawn([console_script("token-keeper-server")], env, log)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = token_keeper_pb2_grpc.TokenKeeperStub(channel)
        server = Server(port, mport, proc, log, channel, stub)
        servers.append(server)
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 20
        while True:
            try:
                r = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return server
            except grpc.aio.AioRpcError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"token-keeper-server did not become SERVING:\n{server.log_text()[-4000:]}")
            await asyncio.sleep(0.1)

    yield start
    for s in servers:
        await s.channel.close()
        if s.proc.poll() is None:
            s.proc.terminate()
    for s in servers:
        try:
            s.proc.wait(15)
        except subprocess.TimeoutExpired:
            s.proc.kill()
