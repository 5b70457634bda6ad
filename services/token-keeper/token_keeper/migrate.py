"""`token-keeper-migrate`: alembic migrations of the ``token_keeper`` schema (runner and CLI: zaptrix.migrations).

token-keeper-migrate                 # upgrade head against ZAPTRIX_DATABASE_URL (safe to run twice/concurrently)
token-keeper-migrate current         # print the applied revision
token-keeper-migrate history
token-keeper-migrate sql             # print the upgrade SQL without touching the database
token-keeper-migrate downgrade REV
"""

from __future__ import annotations

from pathlib import Path

from zaptrix.migrations import Migrations, create_schema_sql

SCHEMA = "token_keeper"
CREATE_SCHEMA_SQL = create_schema_sql(SCHEMA)
MIGRATIONS = Migrations(
    schema=SCHEMA, scripts=Path(__file__).with_name("migrations"), prog="token-keeper-migrate"
)

upgrade = MIGRATIONS.upgrade  # for tests that migrate a fresh database
main = MIGRATIONS.main
