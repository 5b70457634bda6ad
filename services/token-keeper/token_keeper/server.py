"""`token-keeper-server`: the TokenKeeper gRPC service (+ grpc.health.v1, Prometheus metrics, idle sweep)."""

from __future__ import annotations

import asyncio
import contextlib
import sys

import asyncpg
from zaptrix.grpcserver import serve
from zaptrix.logging import configure_logging, get_logger
from zaptrix.settings import DatabaseSettings
from zaptrix.telemetry import setup_telemetry, shutdown_telemetry

from token_keeper.crypto import KeyConfigError, Keyring
from token_keeper.db import SchemaMissing, create_pool
from token_keeper.grpc_api import register
from token_keeper.keys import load_keyring
from token_keeper.oauth import BitrixOAuthClient
from token_keeper.repository import Repository
from token_keeper.service import TokenService
from token_keeper.settings import TokenKeeperSettings

log = get_logger(__name__)


async def check_key_ids(pool: asyncpg.Pool, repo: Repository) -> None:
    async with pool.acquire() as conn:
        usage = await repo.key_usage(conn)
    missing = sorted(set(usage) - set(repo.keyring.key_ids))
    if missing:
        log.error(
            "rows are encrypted with key ids that are not configured: they cannot be read",
            missing_key_ids=missing,
            rows=sum(usage[k] for k in missing),
        )
    stale = sum(n for k, n in usage.items() if k != repo.keyring.active_id)
    log.info(
        "encryption keys", active_key_id=repo.keyring.active_id, rows_by_key_id=usage, not_on_active=stale
    )


async def run(
    settings: TokenKeeperSettings,
    db: DatabaseSettings,
    keyring: Keyring,
    stopped: asyncio.Event | None = None,
) -> None:
    pool = await create_pool(db, application_name="token-keeper")
    repo = Repository(keyring)
    oauth = BitrixOAuthClient(settings)
    service = TokenService(pool, repo, oauth, settings, acquire_timeout_s=db.acquire_timeout_s)
    stop = stopped or asyncio.Event()
    background: asyncio.Task[None] | None = None
    try:
        await check_key_ids(pool, repo)

        async def ready() -> bool:
            async with pool.acquire(timeout=db.acquire_timeout_s) as conn:
                return bool(await conn.fetchval("SELECT true"))

        background = asyncio.create_task(service.run_background(stop))
        log.info(
            "token-keeper starting",
            oauth_url=oauth.url,
            refresh_margin_s=settings.refresh_margin_s,
            idle_refresh_after_days=settings.idle_refresh_after_days,
        )
        await serve(
            port=settings.grpc_port,
            register=register(service),
            readiness=ready,
            metrics_port=settings.metrics_port,
            stopped=stop,
        )
    finally:
        stop.set()
        await service.drain(within_s=settings.oauth_budget_s)
        if background is not None:
            background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await background
        await oauth.aclose()
        await pool.close()


def main() -> None:
    settings = TokenKeeperSettings()
    db = DatabaseSettings()
    configure_logging("token-keeper", settings.log_level)
    try:
        keyring = load_keyring(settings)
    except KeyConfigError as exc:
        log.error("refusing to start: encryption keys", reason=str(exc))
        sys.exit(2)
    setup_telemetry("token-keeper")
    try:
        asyncio.run(run(settings, db, keyring))
    except SchemaMissing as exc:
        log.error("refusing to start", reason=str(exc))
        sys.exit(3)
    finally:
        shutdown_telemetry()


if __name__ == "__main__":
    main()
