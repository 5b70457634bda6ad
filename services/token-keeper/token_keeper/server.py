"""`token-keeper-server`: the TokenKeeper gRPC service (+ grpc.health.v1, Prometheus metrics, idle sweep)."""

from __future__ import annotations

import asyncio
import sys

from zaptrix.database import Database, DatabaseUnavailable, SchemaMissing
from zaptrix.grpcserver import serve_with_database
from zaptrix.logging import get_logger
from zaptrix.process import run_process, tune_gc_for_serving
from zaptrix.settings import DatabaseSettings

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


async def run(
    settings: TokenKeeperSettings,
    db_settings: DatabaseSettings,
    keyring: Keyring,
    stopped: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT or `stopped` (zaptrix.grpcserver.serve_with_database); once the pool is
    open: the key check, then the gauges and the idle sweep. In-flight refreshes get oauth_budget_s to end."""
    db = database(db_settings, "token-keeper")
    oauth = BitrixOAuthClient(settings)
    service = TokenService(db, Repository(keyring), oauth, settings)

    async def after_open(stop: asyncio.Event) -> None:
        try:
            await check_key_ids(db, service.repo)
        except DatabaseUnavailable as exc:
            log.warning("encryption key check skipped", reason=str(exc))
        await service.run_background(stop)

    log.info(
        "token-keeper starting",
        oauth_url=oauth.url,
        refresh_margin_s=settings.refresh_margin_s,
        idle_refresh_after_days=settings.idle_refresh_after_days,
    )
    try:
        await serve_with_database(
            db,
            port=settings.grpc_port,
            register=register(service),
            metrics_port=settings.metrics_port,
            after_open=after_open,
            on_stop=lambda: service.drain(within_s=settings.oauth_budget_s),
            stopped=stopped,
        )
    finally:
        await oauth.aclose()


def main() -> None:
    settings = TokenKeeperSettings()
    db = DatabaseSettings()

    def body() -> None:
        try:
            keyring = load_keyring(settings)
        except KeyConfigError as exc:
            log.error("refusing to start: encryption keys", reason=str(exc))
            sys.exit(2)
        tune_gc_for_serving()  # as the web and dispatcher processes (zaptrix.process)
        try:
            asyncio.run(run(settings, db, keyring))
        except SchemaMissing as exc:
            log.error("refusing to start", reason=str(exc))
            sys.exit(3)

    run_process("token-keeper", settings.log_level, body)


if __name__ == "__main__":
    main()
