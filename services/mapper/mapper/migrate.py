"""`mapper-migrate`: alembic migrations of the ``mapper`` schema (runner and CLI: zaptrix.migrations)."""

from __future__ import annotations

from pathlib import Path

from zaptrix.migrations import Migrations

SCHEMA = "mapper"
MIGRATIONS = Migrations(schema=SCHEMA, scripts=Path(__file__).with_name("migrations"), prog="mapper-migrate")

upgrade = MIGRATIONS.upgrade  # for tests and benchmarks that migrate a fresh database
main = MIGRATIONS.main
