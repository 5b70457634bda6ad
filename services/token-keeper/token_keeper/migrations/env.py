"""Alembic environment of token-keeper, configured in code (no alembic.ini): see token_keeper.migrate.

Online runs take a transaction-scoped advisory lock first, so concurrent `token-keeper-migrate` runs (two
Helm hook pods, a rollout racing a manual run) serialize; the second finds head already applied. The version
table lives inside the `token_keeper` schema, which is therefore created here before alembic looks for it.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from token_keeper.migrate import CREATE_SCHEMA_SQL, MIGRATION_LOCK_KEY, SCHEMA, VERSION_TABLE, sqlalchemy_url

config = context.config


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=None,
        version_table=VERSION_TABLE,
        version_table_schema=SCHEMA,
        transaction_per_migration=False,
        **kwargs,  # type: ignore[arg-type]
    )


def run_offline() -> None:
    _configure(url=sqlalchemy_url(config.attributes["database_url"]), literal_binds=True)
    with context.begin_transaction():
        context.execute(CREATE_SCHEMA_SQL)
        context.run_migrations()


def _run_sync(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        connection.execute(text(CREATE_SCHEMA_SQL))
        context.run_migrations()


async def run_online() -> None:
    engine = create_async_engine(sqlalchemy_url(config.attributes["database_url"]))
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_sync)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    asyncio.run(run_online())
