"""The asyncpg pool of a service that owns a schema (mapper, token-keeper): opened in the background with
capped backoff (the gRPC server answers NOT_SERVING meanwhile), every acquire bounded, and every database
outage, whatever the driver raised, turned into one `DatabaseUnavailable` (gRPC UNAVAILABLE: retry)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    stop_never,
    wait_exponential,
)
from tenacity.stop import stop_base

from zaptrix.dbfailures import is_outage
from zaptrix.errors import TransientError
from zaptrix.logging import get_logger
from zaptrix.settings import DatabaseSettings

log = get_logger(__name__)


class DatabaseUnavailable(TransientError):
    """The database cannot serve right now (not connected yet, down, refusing, pool exhausted, statement
    timeout): retry with backoff. The message (``reason``) names the driver's error type only, never its
    text."""


class SchemaMissing(RuntimeError):
    """The database answers but the service's schema is not migrated: a deployment error, not an outage."""


async def _keep_session(conn: Any) -> None:
    """Release without asyncpg's default reset query.

    asyncpg normally runs ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on
    every release: a second round trip for each one-statement RPC. The services never change session
    state (no SET, LISTEN, cursors or session advisory locks: only SET LOCAL and transaction-level
    locks; the migration runner uses its own connection), so there is nothing to reset. asyncpg still
    rolls back a transaction left open, reset or not.
    """


class _Stopped(stop_base):
    """tenacity stop condition: the process is shutting down."""

    def __init__(self, stopped: asyncio.Event) -> None:
        self.stopped = stopped

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.stopped.is_set()


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    retry_in = state.next_action.sleep if state.next_action is not None else None
    log.warning("database unreachable, retrying", error=type(exc).__name__, retry_in_s=retry_in)


class Database:
    def __init__(
        self,
        settings: DatabaseSettings,
        *,
        application_name: str,
        connect_timeout_s: float = 5.0,
        command_timeout_s: float | None = None,
        required_table: str | None = None,
        migrate_command: str = "",
    ) -> None:
        """`command_timeout_s` is the client-side backstop of one statement (default: a little above the
        server's statement_timeout). With `required_table` (schema.table), opening fails with SchemaMissing
        when it does not exist, naming `migrate_command` as the fix."""
        self.settings = settings
        self.application_name = application_name
        self.connect_timeout_s = connect_timeout_s
        self.command_timeout_s = command_timeout_s or settings.statement_timeout_ms / 1000 + 1
        self.required_table = required_table
        self.migrate_command = migrate_command
        self.pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        """One attempt to open the pool (connects pool_min_size connections) and check the schema."""
        s = self.settings
        pool = await asyncpg.create_pool(
            dsn=s.url.get_secret_value(),
            min_size=s.pool_min_size,
            max_size=s.pool_max_size,
            timeout=self.connect_timeout_s,
            command_timeout=self.command_timeout_s,
            max_inactive_connection_lifetime=300,
            reset=_keep_session,
            server_settings={
                "application_name": self.application_name,
                "statement_timeout": str(s.statement_timeout_ms),
                "idle_in_transaction_session_timeout": str(max(s.statement_timeout_ms * 2, 10_000)),
            },
        )
        try:
            await self._check_schema(pool)
        except BaseException:
            pool.terminate()
            raise
        self.pool = pool

    async def _check_schema(self, pool: asyncpg.Pool) -> None:
        if self.required_table is None:
            return
        if not await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", self.required_table):
            schema = self.required_table.split(".", 1)[0]
            raise SchemaMissing(f"schema {schema} is not migrated: run `{self.migrate_command}` first")

    async def open_until_ready(
        self, stopped: asyncio.Event | None = None, *, within_s: float | None = None
    ) -> None:
        """Retry opening the pool with capped backoff (0.5 s doubling to 10 s) while the database is out.

        Returns when open, or quietly once `stopped` is set. After `within_s` (None: forever) the outage
        is raised as DatabaseUnavailable. Anything that is not an outage (SchemaMissing, a bad DSN) is
        raised at once."""
        stop: stop_base = stop_never if within_s is None else stop_after_delay(within_s)
        if stopped is not None:
            stop = stop | _Stopped(stopped)
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(is_outage),
                wait=wait_exponential(multiplier=0.5, max=10.0),
                stop=stop,
                before_sleep=_log_retry,
                reraise=True,
            ):
                with attempt:
                    await self.open()
        except Exception as exc:
            if not is_outage(exc):
                raise
            if stopped is not None and stopped.is_set():
                return
            raise DatabaseUnavailable(f"database unreachable ({type(exc).__name__})") from exc
        log.info("database pool open", min_size=self.settings.pool_min_size)

    async def close(self, timeout_s: float = 5.0) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout_s)
            except TimeoutError:
                pool.terminate()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; never waits longer than acquire_timeout_s for one. An outage while
        acquiring or inside the block becomes DatabaseUnavailable; other errors pass unchanged."""
        if self.pool is None:
            raise DatabaseUnavailable("database not connected yet")
        try:
            async with self.pool.acquire(timeout=self.settings.acquire_timeout_s) as conn:
                yield conn
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            if is_outage(exc):
                raise DatabaseUnavailable(f"database unavailable ({type(exc).__name__}); retry") from exc
            raise

    async def ping(self) -> bool:
        """Readiness: a round trip through the pool."""
        try:
            async with self.connection() as conn:
                return bool(await conn.fetchval("SELECT 1") == 1)
        except DatabaseUnavailable:
            return False
