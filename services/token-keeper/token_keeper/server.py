"""`token-keeper-server`: the TokenKeeper gRPC service (+ grpc.health.v1, Prometheus metrics, idle sweep)."""

from __future__ import annotations

import asyncio
import contextlib
import sys

from zaptrix.database import Database, DatabaseUnavailable, SchemaMissing
from zaptrix.grpcserver import serve
from zaptrix.logging import configure_logging, get_logger
from zaptrix.settings import DatabaseSettings
from zaptrix.telemetry import setup_telemetry, shutdown_telemetry

from token_keeper.crypto import KeyConfigError, Keyring
from token_keeper.keys import load_keyring
from token_keeper.oauth import BitrixOAuthClient
from token_keeper.repository import Repository, database
from token_keeper.service import TokenService
from token_keeper.servicer import register
from token_keeper.settings import TokenKeeperSettings

log = get_logger(__name__)


async def check_key_ids(db: Database, repo: Repository) -> None:
    async with db.connection() as conn:
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


async def _start(db: Database, service: TokenService, stop: asyncio.Event) -> None:
    """In the background while the server answers NOT_SERVING: open the pool (retrying while PostgreSQL
    is out), check the keys, then run the gauges and the idle sweep. An unmigrated schema stops the server."""
    try:
        await db.open_until_ready(stop)
    except Exception:  # not an outage: SchemaMissing, a malformed DSN
        stop.set()
        raise
    if stop.is_set():
        return
    try:
        await check_key_ids(db, service.repo)
    except DatabaseUnavailable as exc:
        log.warning("encryption key check skipped", reason=str(exc))
    await service.run_background(stop)


async def run(
    settings: TokenKeeperSettings,
    db_settings: DatabaseSettings,
    keyring: Keyring,
    stopped: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT or `stopped`. The gRPC server starts at once and reports NOT_SERVING
    until PostgreSQL first answers (the pool keeps retrying in the background); after that it stays
    SERVING (cached tokens keep flowing), and a database outage shows in the "postgres" health status and
    zaptrix_dependency_up."""
    db = database(db_settings, "token-keeper")
    oauth = BitrixOAuthClient(settings)
    service = TokenService(db, Repository(keyring), oauth, settings)
    stop = stopped or asyncio.Event()
    background = asyncio.create_task(_start(db, service, stop), name="db-open")
    log.info(
        "token-keeper starting",
        oauth_url=oauth.url,
        refresh_margin_s=settings.refresh_margin_s,
        idle_refresh_after_days=settings.idle_refresh_after_days,
    )
    try:
        await serve(
            port=settings.grpc_port,
            register=register(service),
            dependencies={"postgres": db.ping},
            metrics_port=settings.metrics_port,
            stopped=stop,
        )
    finally:
        stop.set()
        await service.drain(within_s=settings.oauth_budget_s)
        if background.done():
            background.result()  # e.g. SchemaMissing: why the server stopped
        else:
            background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await background
        await oauth.aclose()
        await db.close()


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
