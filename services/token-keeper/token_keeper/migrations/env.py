"""Alembic environment of the token_keeper schema: run by `token-keeper-migrate` (zaptrix.migrations)."""

from zaptrix.migrations import run_env

run_env()
