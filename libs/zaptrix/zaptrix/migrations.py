"""The migration runner and CLI of every service that owns a schema (`mapper-migrate`, `token-keeper-migrate`).

Alembic is configured in code (no alembic.ini). Each schema keeps its version table inside itself, so the
services' histories never meet. Every run takes a PostgreSQL transaction-level advisory lock (one key per
schema) before alembic reads the version table, and the whole upgrade runs in that one transaction
(PostgreSQL DDL is transactional): a second runner (another Helm hook Job, a manual run) waits, then finds
the schema at head and does nothing; a failed upgrade leaves nothing half-applied.

A service's alembic `env.py` is one call, `run_env()`; its entry point is `Migrations(...).main`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from alembic import command, context
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from zaptrix.logging import configure_logging, get_logger
from zaptrix.settings import DatabaseSettings

VERSION_TABLE = "alembic_version"

log = get_logger(__name__)


def create_schema_sql(schema: str) -> str:
    """Creates the schema only when missing: CREATE SCHEMA IF NOT EXISTS still needs CREATE on the database,
    which a least-privilege role owning a pre-created schema (docs/deploy.md) does not have."""
    return f"""DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = '{schema}') THEN CREATE SCHEMA {schema}; END IF;
END $$"""


def advisory_lock_key(schema: str) -> int:
    """One fixed signed 64-bit key per schema."""
    return int.from_bytes(
        hashlib.sha256(f"zaptrix:{schema}:migrations".encode()).digest()[:8], "big", signed=True
    )


@dataclass(frozen=True)
class Migrations:
    schema: str
    scripts: Path  # the service's alembic script directory (env.py, versions/)
    prog: str  # the console script, e.g. mapper-migrate

    def config(self, connection: Connection | None = None) -> Config:
        config = Config(stdout=sys.stdout)  # the current stdout (alembic defaults to the one at import)
        config.set_main_option("script_location", str(self.scripts))
        config.attributes["migrations"] = self
        if connection is not None:
            config.attributes["connection"] = connection
        return config

    def _engine(self, dsn: str) -> AsyncEngine:
        # The DSN goes to asyncpg untouched (same parsing as the server's pool, sslmode included).
        async def connect() -> asyncpg.Connection:
            return await asyncpg.connect(dsn, server_settings={"application_name": self.prog})

        return create_async_engine("postgresql+asyncpg://", async_creator=connect, poolclass=NullPool)

    def _locked(self, connection: Connection, action: str, revision: str) -> None:
        connection.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": advisory_lock_key(self.schema)}
        )
        if action == "upgrade":
            command.upgrade(self.config(connection), revision)
        else:
            command.downgrade(self.config(connection), revision)

    async def _run(self, dsn: str, action: str, revision: str) -> None:
        engine = self._engine(dsn)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(self._locked, action, revision)
        finally:
            await engine.dispose()

    async def upgrade(self, dsn: str, revision: str = "head") -> None:
        await self._run(dsn, "upgrade", revision)

    async def downgrade(self, dsn: str, revision: str) -> None:
        await self._run(dsn, "downgrade", revision)

    async def current_revision(self, dsn: str) -> str | None:
        def read(connection: Connection) -> str | None:
            migration = MigrationContext.configure(
                connection, opts={"version_table": VERSION_TABLE, "version_table_schema": self.schema}
            )
            revision = migration.get_current_revision()
            return None if revision is None else str(revision)

        engine = self._engine(dsn)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(read)
        finally:
            await engine.dispose()

    def head_revision(self) -> str:
        head = ScriptDirectory.from_config(self.config()).get_current_head()
        assert head is not None
        return head

    def main(self, argv: list[str] | None = None) -> None:
        configure_logging(self.prog, "INFO")
        sys.exit(self.cli(argv, DatabaseSettings().url.get_secret_value()))

    def cli(self, argv: list[str] | None, dsn: str) -> int:
        """The command line without process set-up; returns the exit code."""
        parser = argparse.ArgumentParser(
            prog=self.prog,
            description=f"Migrate the {self.schema} schema (DSN from ZAPTRIX_DATABASE_URL). "
            "Safe to run concurrently.",
        )
        sub = parser.add_subparsers(dest="action")
        up = sub.add_parser("upgrade", help="upgrade to a revision (default: head); the default action")
        up.add_argument("revision", nargs="?", default="head")
        down = sub.add_parser("downgrade", help="downgrade to a revision (development only)")
        down.add_argument("revision")
        sub.add_parser("current", help="print the applied revision")
        sub.add_parser("history", help="list the revisions (no database needed)")
        sub.add_parser("sql", help="print the SQL of upgrade head (no database needed)")
        args = parser.parse_args(argv)
        action = args.action or "upgrade"
        try:
            if action == "current":
                print(asyncio.run(self.current_revision(dsn)) or "none")  # noqa: T201
                return 0
            if action == "history":
                command.history(self.config())
                return 0
            if action == "sql":
                command.upgrade(self.config(), "head", sql=True)
                return 0
            revision = getattr(args, "revision", "head")
            log.info("migrating", action=action, revision=revision, schema=self.schema)
            asyncio.run(self.upgrade(dsn, revision) if action == "upgrade" else self.downgrade(dsn, revision))
            log.info("migrated", action=action, revision=revision, schema=self.schema)
            return 0
        except (OSError, asyncpg.PostgresError, DBAPIError) as exc:
            # The DSN is never logged: it carries the password. A DBAPIError wraps the driver's error.
            cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
            log.error("migration failed", error=type(cause).__name__, detail=str(cause).splitlines()[0])
            return 1


def run_env() -> None:
    """The body of every service's alembic env.py.

    Online, the runner has opened the connection, begun the transaction and taken the advisory lock; the
    schema is created here (the version table lives in it) and everything runs in that one transaction.
    Offline (`sql`), the same statements are printed."""
    config = context.config
    migrations = config.attributes.get("migrations")
    if not isinstance(migrations, Migrations):
        raise RuntimeError("run the migrations through the service's *-migrate command (zaptrix.migrations)")
    options: dict[str, object] = {
        "version_table": VERSION_TABLE,
        "version_table_schema": migrations.schema,
        "transactional_ddl": True,
    }
    if context.is_offline_mode():
        context.configure(dialect_name="postgresql", literal_binds=True, **options)  # type: ignore[arg-type]
        with context.begin_transaction():
            context.execute(create_schema_sql(migrations.schema))
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError("run the migrations through the service's *-migrate command (zaptrix.migrations)")
    connection.execute(text(create_schema_sql(migrations.schema)))
    context.configure(connection=connection, **options)  # type: ignore[arg-type]
    with context.begin_transaction():
        context.run_migrations()
