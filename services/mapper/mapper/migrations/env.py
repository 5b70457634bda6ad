"""Alembic environment of the mapper schema: run by `mapper-migrate` (zaptrix.migrations)."""

from zaptrix.migrations import run_env

run_env()
