"""asyncpg pool of token-keeper (the server and the admin CLI share it)."""

from __future__ import annotations

import asyncpg
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter
from zaptrix.logging import get_logger
from zaptrix.settings import DatabaseSettings

log = get_logger(__name__)


class SchemaMissing(RuntimeError):
    pass


async def create_pool(
    db: DatabaseSettings, *, application_name: str, connect_for_s: float = 30.0
) -> asyncpg.Pool:
    """Connect (retrying while PostgreSQL comes up, bounded) and check that the schema is migrated."""
    pool: asyncpg.Pool | None = None
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(
            (OSError, asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError)
        ),
        stop=stop_after_delay(connect_for_s),
        wait=wait_exponential_jitter(multiplier=0.2, max=3.0),
        reraise=True,
    ):
        with attempt:
            if attempt.retry_state.attempt_number > 1:
                log.info("waiting for PostgreSQL", attempt=attempt.retry_state.attempt_number)
            pool = await asyncpg.create_pool(
                db.url.get_secret_value(),
                min_size=db.pool_min_size,
                max_size=db.pool_max_size,
                command_timeout=max(db.statement_timeout_ms / 1000 * 4, 30.0),
                server_settings={
                    "application_name": application_name,
                    "statement_timeout": str(db.statement_timeout_ms),
                },
            )
    assert pool is not None
    present = await pool.fetchval("SELECT to_regclass('token_keeper.portal_config') IS NOT NULL")
    if not present:
        await pool.close()
        raise SchemaMissing("schema token_keeper is not migrated: run `token-keeper-migrate` first")
    return pool
