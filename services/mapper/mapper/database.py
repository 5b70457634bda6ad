"""The asyncpg pool: opened in the background, every acquire bounded, transient failures → Unavailable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from zaptrix.dbfailures import is_outage
from zaptrix.logging import get_logger
from zaptrix.retrying import retry_until_stopped
from zaptrix.settings import DatabaseSettings

from mapper.errors import Unavailable

log = get_logger(__name__)


async def _keep_session(conn: Any) -> None:
    """Release without asyncpg's default reset query.

    asyncpg normally runs ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on
    every release: a second round trip for each one-statement RPC. The mapper never changes session state
    (no SET, LISTEN, cursors or session advisory locks; the migration runner uses its own connection),
    so there is nothing to reset. asyncpg still rolls back a transaction left open, reset or not.
    """


class Database:
    def __init__(
        self, settings: DatabaseSettings, *, connect_timeout_s: float, application_name: str
    ) -> None:
        self.settings = settings
        self.connect_timeout_s = connect_timeout_s
        self.application_name = application_name
        self.pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        """One attempt to open the pool (connects pool_min_size connections)."""
        s = self.settings
        self.pool = await asyncpg.create_pool(
            dsn=s.url.get_secret_value(),
            min_size=s.pool_min_size,
            max_size=s.pool_max_size,
            timeout=self.connect_timeout_s,
            # Client-side backstop a little above the server's statement_timeout.
            command_timeout=s.statement_timeout_ms / 1000 + 1,
            max_inactive_connection_lifetime=300,
            reset=_keep_session,
            server_settings={
                "application_name": self.application_name,
                "statement_timeout": str(s.statement_timeout_ms),
                "idle_in_transaction_session_timeout": str(max(s.statement_timeout_ms * 2, 10_000)),
            },
        )

    async def open_until_ready(self, stopped: asyncio.Event | None = None) -> None:
        """Retry opening the pool with capped backoff; the server answers NOT_SERVING meanwhile."""
        if self.pool is not None:
            return

        def retrying(exc: BaseException, delay: float) -> None:
            log.warning("database unreachable, retrying", error=type(exc).__name__, retry_in_s=delay)

        if await retry_until_stopped(self.open, retry_on=is_outage, stopped=stopped, on_retry=retrying):
            log.info("database pool open", min_size=self.settings.pool_min_size)

    async def close(self, timeout_s: float = 5.0) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout_s)
            except TimeoutError:
                pool.terminate()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """A pooled connection; never waits longer than acquire_timeout_s for one."""
        if self.pool is None:
            raise Unavailable("database not connected yet")
        try:
            async with self.pool.acquire(timeout=self.settings.acquire_timeout_s) as conn:
                yield conn
        except Exception as exc:
            # Every mapper RPC is idempotent, so callers may retry an outage (gRPC UNAVAILABLE) with backoff.
            if is_outage(exc):
                raise Unavailable(f"database unavailable ({type(exc).__name__})") from exc
            raise

    async def ping(self) -> bool:
        """Readiness: a round trip through the pool."""
        try:
            async with self.connection() as conn:
                return bool(await conn.fetchval("SELECT 1") == 1)
        except Unavailable:
            return False
