"""`mapper-migrate`: alembic migrations of the ``mapper`` schema, safe to run concurrently.

Every run takes a PostgreSQL transaction-level advisory lock before alembic reads the version table,
and the whole upgrade runs in that transaction: a second runner (another Helm hook Job, a replica's
init container) waits, then finds the schema at head and does nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from zaptrix.logging import configure_logging, get_logger
from zaptrix.settings import DatabaseSettings

SCHEMA = "mapper"
VERSION_TABLE = "alembic_version"
# One fixed 64-bit key per schema; token-keeper derives its own from its own name.
ADVISORY_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"zaptrix:mapper:migrations").digest()[:8], "big", signed=True
)

log = get_logger(__name__)


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    return config


def _engine(dsn: str) -> AsyncEngine:
    # The DSN goes to asyncpg untouched (same parsing as the server's pool, sslmode included).
    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(dsn, server_settings={"application_name": "mapper-migrate"})

    return create_async_engine("postgresql+asyncpg://", async_creator=connect, poolclass=NullPool)


def _locked(connection: Connection, action: str, revision: str) -> None:
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
    config = alembic_config()
    config.attributes["connection"] = connection
    if action == "upgrade":
        command.upgrade(config, revision)
    else:
        command.downgrade(config, revision)


async def upgrade(dsn: str, revision: str = "head") -> None:
    await _run(dsn, "upgrade", revision)


async def downgrade(dsn: str, revision: str) -> None:
    await _run(dsn, "downgrade", revision)


async def _run(dsn: str, action: str, revision: str) -> None:
    engine = _engine(dsn)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_locked, action, revision)
    finally:
        await engine.dispose()


async def current_revision(dsn: str) -> str | None:
    def read(connection: Connection) -> str | None:
        context = MigrationContext.configure(
            connection, opts={"version_table": VERSION_TABLE, "version_table_schema": SCHEMA}
        )
        revision = context.get_current_revision()
        return None if revision is None else str(revision)

    engine = _engine(dsn)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(read)
    finally:
        await engine.dispose()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def main(argv: list[str] | None = None) -> None:
    configure_logging("mapper-migrate", "INFO")
    sys.exit(cli(argv, DatabaseSettings().url.get_secret_value()))


def cli(argv: list[str] | None, dsn: str) -> int:
    """The command line without process set-up; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="mapper-migrate",
        description="Migrate the mapper schema (DSN from ZAPTRIX_DATABASE_URL). Safe to run concurrently.",
    )
    sub = parser.add_subparsers(dest="action")
    up = sub.add_parser("upgrade", help="upgrade to a revision (default: head); the default action")
    up.add_argument("revision", nargs="?", default="head")
    down = sub.add_parser("downgrade", help="downgrade to a revision (development only)")
    down.add_argument("revision")
    sub.add_parser("current", help="print the applied revision")
    args = parser.parse_args(argv)
    action = args.action or "upgrade"
    try:
        if action == "current":
            print(asyncio.run(current_revision(dsn)) or "none")  # noqa: T201
            return 0
        revision = getattr(args, "revision", "head")
        log.info("migrating", action=action, revision=revision, schema=SCHEMA)
        asyncio.run(upgrade(dsn, revision) if action == "upgrade" else downgrade(dsn, revision))
        log.info("migrated", action=action, revision=revision, schema=SCHEMA)
        return 0
    except (OSError, asyncpg.PostgresError, DBAPIError) as exc:
        # The DSN is never logged: it carries the password. A DBAPIError wraps the driver's error.
        cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        log.error("migration failed", error=type(cause).__name__, detail=str(cause).splitlines()[0])
        return 1
