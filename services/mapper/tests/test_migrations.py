from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

import pytest
from mapper import migrate
from mapper_support import sql
from structlog.testing import capture_logs
from zaptrix_testing.processes import console_script

TABLES = [
    "alembic_version",
    "channel_binding",
    "conversation_alias",
    "conversation_mapping",
    "customer_consent",
    "message_link",
    "message_template",
    "portal_uninstall",
    "processed_event",
    "usage_monthly",
]


async def _tables(dsn: str, schema: str) -> list[str]:
    rows = await sql(dsn, "SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY 1", schema)
    return [r["tablename"] for r in rows]


async def _cli_migrate(dsn: str) -> tuple[int, bytes]:
    proc = await asyncio.create_subprocess_exec(
        console_script("mapper-migrate"),
        env={**os.environ, "ZAPTRIX_DATABASE_URL": dsn},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out


async def test_upgrade_twice_is_a_no_op_and_versions_live_in_the_schema(migrated_db: str) -> None:
    await migrate.upgrade(migrated_db)
    assert await migrate.MIGRATIONS.current_revision(migrated_db) == migrate.MIGRATIONS.head_revision()
    assert await _tables(migrated_db, "mapper") == TABLES
    assert await _tables(migrated_db, "public") == []  # no alembic_version outside the schema


async def test_concurrent_runners_in_and_across_processes(
    fresh_database: Callable[[], Awaitable[str]],
) -> None:
    dsn = await fresh_database()
    # One real `mapper-migrate` process (as a Helm hook Job runs it) racing three in-process runners,
    # each on its own connection.
    (code, out), *_ = await asyncio.gather(_cli_migrate(dsn), *(migrate.upgrade(dsn) for _ in range(3)))
    assert code == 0, out.decode()
    assert b'"event": "migrated"' in out
    assert await migrate.MIGRATIONS.current_revision(dsn) == migrate.MIGRATIONS.head_revision()
    assert await _tables(dsn, "mapper") == TABLES
    rows = await sql(dsn, "SELECT count(*) AS n FROM mapper.alembic_version")
    assert rows[0]["n"] == 1


async def test_downgrade_to_base_and_up_again(migrated_db: str) -> None:
    await migrate.MIGRATIONS.downgrade(migrated_db, "base")
    assert await migrate.MIGRATIONS.current_revision(migrated_db) is None
    assert await _tables(migrated_db, "mapper") == ["alembic_version"]
    await migrate.upgrade(migrated_db)
    assert await _tables(migrated_db, "mapper") == TABLES


def test_cli_reports_an_unreachable_database_without_the_password(pg_server_url: str) -> None:
    wrong = (
        pg_server_url.replace("zaptrix:zaptrix@", "zaptrix:hunter2-secret@").rsplit("/", 1)[0] + "/no_such_db"
    )
    with capture_logs() as logs:
        code = migrate.MIGRATIONS.cli([], wrong)
    assert code == 1
    failures = [e for e in logs if e["event"] == "migration failed"]
    assert len(failures) == 1
    assert "hunter2-secret" not in repr(logs)


def test_history_and_offline_sql_need_no_database(capsys: pytest.CaptureFixture[str]) -> None:
    unreachable = "postgresql://nobody:pw@127.0.0.1:1/none"
    assert migrate.MIGRATIONS.cli(["history"], unreachable) == 0
    assert migrate.MIGRATIONS.head_revision() in capsys.readouterr().out
    assert migrate.MIGRATIONS.cli(["sql"], unreachable) == 0
    sql_text = capsys.readouterr().out
    assert "CREATE TABLE mapper.channel_binding" in sql_text
    assert "mapper.alembic_version" in sql_text
