"""The mapper's database for the commands that read or change it directly (usage, erase).

Where: ZAPTRIX_MAPPER_DATABASE_URL when set (a shell that also has token-keeper's ZAPTRIX_DATABASE_URL),
else ZAPTRIX_DATABASE_URL (run in the mapper's environment). The other ZAPTRIX_DATABASE_* settings apply.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pydantic import SecretStr
from zaptrix.database import Database, DatabaseUnavailable, SchemaMissing
from zaptrix.settings import DatabaseSettings

from zaptrix_admin.output import UsageError


@asynccontextmanager
async def mapper_database() -> AsyncIterator[Database]:
    # An erase scans the dedupe records once: give its statements a minute, not the services' 5 s.
    settings = DatabaseSettings(pool_min_size=1, pool_max_size=2, statement_timeout_ms=60_000)
    url = os.environ.get("ZAPTRIX_MAPPER_DATABASE_URL", "").strip()
    if url:
        settings = settings.model_copy(update={"url": SecretStr(url)})
    db = Database(
        settings,
        application_name="zaptrix-admin",
        required_table="mapper.usage_monthly",
        migrate_command="mapper-migrate",
    )
    try:
        await db.open()
    except SchemaMissing as exc:
        raise UsageError(str(exc)) from None
    except (DatabaseUnavailable, OSError) as exc:
        raise UsageError(f"the mapper's database is unreachable ({type(exc).__name__})") from None
    try:
        yield db
    finally:
        await db.close()
