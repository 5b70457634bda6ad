"""Fixtures shared by every test suite: the real PostgreSQL and Kafka that `make test` starts.

`make test` exports ZAPTRIX_TEST_PG_URL (a superuser DSN of the throwaway cluster) and
ZAPTRIX_TEST_KAFKA (bootstrap servers). Tests that need them fail with a clear message without them:
they are never skipped.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

# The whole-system fixture (`system`), shared by tests/e2e and tests/security: registered once, so one
# system serves both. A plugin module rather than tests/conftest.py, whose module name would clash with
# dev/sandbox/tests/conftest.py under --import-mode=importlib.
sys.path.insert(0, str(Path(__file__).resolve().parent))
pytest_plugins = ["tests.system"]


def _require(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run the tests through `make test` (it starts PostgreSQL and Kafka)")
    return value


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    return _require("ZAPTRIX_TEST_PG_URL")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    return _require("ZAPTRIX_TEST_KAFKA")


def _with_db(url: str, db: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{db}"


@pytest.fixture
async def fresh_database(pg_server_url: str) -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """Factory: each call creates an empty database and returns its DSN; all are dropped afterwards."""
    created: list[str] = []

    async def make() -> str:
        name = f"zt_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(pg_server_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        created.append(name)
        return _with_db(pg_server_url, name)

    yield make
    conn = await asyncpg.connect(pg_server_url)
    try:
        for name in created:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
def unique_topic_suffix() -> str:
    return uuid.uuid4().hex[:8]
