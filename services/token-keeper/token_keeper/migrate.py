"""`token-keeper-migrate`: alembic migrations of the `token_keeper` schema, configured in code.

token-keeper-migrate                 # upgrade head against ZAPTRIX_DATABASE_URL (safe to run twice/concurrently)
token-keeper-migrate current         # show the applied revision
token-keeper-migrate history
token-keeper-migrate sql             # print the upgrade SQL without touching the database
token-keeper-migrate downgrade REV
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from importlib.resources import files

from alembic import command
from alembic.config import Config
from zaptrix.logging import configure_logging, get_logger
from zaptrix.settings import DatabaseSettings

SCHEMA = "token_keeper"
VERSION_TABLE = "alembic_version"
# pg_advisory_xact_lock key serializing concurrent migration runs (stable: "tk-migr" as an int64).
MIGRATION_LOCK_KEY = int.from_bytes(b"tk-migr\x00", "big") >> 1

# Only when missing: CREATE SCHEMA IF NOT EXISTS still needs CREATE on the database, which a least-privilege
# role owning a pre-created schema (docs/deploy.md) does not have.
CREATE_SCHEMA_SQL = f"""DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = '{SCHEMA}') THEN CREATE SCHEMA {SCHEMA}; END IF;
END $$"""

log = get_logger(__name__)


def sqlalchemy_url(dsn: str) -> str:
    """asyncpg DSN (postgresql://...) -> SQLAlchemy URL with the asyncpg driver."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+asyncpg://" + dsn[len(prefix) :]
    raise ValueError("ZAPTRIX_DATABASE_URL must start with postgresql://")


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(files("token_keeper") / "migrations"))
    # Passed as an attribute, not a main option: no %-interpolation and the DSN (password) is never printed.
    cfg.attributes["database_url"] = database_url
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


async def upgrade_async(database_url: str, revision: str = "head") -> None:
    """For callers inside an event loop (tests): alembic's env.py runs its own loop, so use a thread."""
    await asyncio.to_thread(upgrade, database_url, revision)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="token-keeper-migrate", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd")
    up = sub.add_parser("upgrade", help="upgrade to a revision (default head)")
    up.add_argument("revision", nargs="?", default="head")
    down = sub.add_parser("downgrade", help="downgrade to a revision")
    down.add_argument("revision")
    sub.add_parser("current", help="show the applied revision")
    sub.add_parser("history", help="list revisions")
    sub.add_parser("sql", help="print the SQL of upgrade head (offline)")
    args = parser.parse_args(argv)

    configure_logging("token-keeper-migrate")
    url = DatabaseSettings().url.get_secret_value()
    cfg = alembic_config(url)
    cmd = args.cmd or "upgrade"
    try:
        if cmd == "upgrade":
            command.upgrade(cfg, getattr(args, "revision", "head"))
            log.info("migrations applied", schema=SCHEMA, revision=getattr(args, "revision", "head"))
        elif cmd == "downgrade":
            command.downgrade(cfg, args.revision)
        elif cmd == "current":
            command.current(cfg, verbose=True)
        elif cmd == "history":
            command.history(cfg)
        elif cmd == "sql":
            command.upgrade(cfg, "head", sql=True)
    except Exception as exc:
        # The DSN is never part of the message we print; asyncpg errors do not echo passwords.
        log.error("migration failed", error_type=type(exc).__name__, error=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
