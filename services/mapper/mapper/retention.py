"""Retention: what the mapper deletes, when, and in what steps (docs/mapper.md "Retention").

One sweep removes, oldest first and `retention_batch` rows per statement (each statement short, rows
taken with SKIP LOCKED, so a sweep never holds long locks nor waits for a busy row):
- dedupe records older than dedupe_retention_hours (past Meta's 7-day webhook retries);
- message links older than link_retention_days;
- conversations idle for conversation_idle_days, with their links and aliases; their consent records
  too, except an opt-out ("stop"), which must outlive the conversation so marketing stays refused;
- everything of a portal uninstalled more than uninstall_grace_days ago (channels, conversations,
  links, aliases, consent, ledger).

`mapper-retention` runs one sweep and exits (the chart's CronJob); mapper-server runs it every
retention_interval_s when that is set (local `make run`).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import REGISTRY, push_to_gateway
from zaptrix.database import Database, DatabaseUnavailable
from zaptrix.logging import get_logger
from zaptrix.process import run_process
from zaptrix.settings import DatabaseSettings

from mapper.metrics import RETENTION_ERRORS, RETENTION_LAST_SUCCESS, RETENTION_REMOVED
from mapper.settings import MapperSettings, RetentionSettings

log = get_logger(__name__)

_EXPIRE_PROCESSED = """
WITH gone AS (
    DELETE FROM mapper.processed_event WHERE event_id IN (
        SELECT event_id FROM mapper.processed_event
        WHERE processed_at < now() - $1::interval
        ORDER BY processed_at LIMIT $2 FOR UPDATE SKIP LOCKED)
    RETURNING 1)
SELECT count(*) AS processed_event FROM gone"""

_EXPIRE_LINKS = """
WITH gone AS (
    DELETE FROM mapper.message_link WHERE wamid IN (
        SELECT wamid FROM mapper.message_link
        WHERE created_at < now() - $1::interval
        ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)
    RETURNING 1)
SELECT count(*) AS message_link FROM gone"""

# A batch of conversations (the `victims` CTE, taken FOR UPDATE SKIP LOCKED) with their links, aliases
# and consent, counted per table. $1: which consent values go with them.
_DELETE_CONVERSATIONS = """
WITH victims AS ({victims}),
links AS (DELETE FROM mapper.message_link WHERE conversation_id IN (SELECT id FROM victims) RETURNING 1),
consent AS (
    DELETE FROM mapper.customer_consent cc
    USING mapper.conversation_alias a
    WHERE a.conversation_id IN (SELECT id FROM victims) AND cc.phone_number_id = a.phone_number_id
        AND cc.wa_id = a.value AND cc.value = ANY($1::text[])
    RETURNING 1),
aliases AS (
    DELETE FROM mapper.conversation_alias WHERE conversation_id IN (SELECT id FROM victims) RETURNING 1),
conversations AS (
    DELETE FROM mapper.conversation_mapping WHERE id IN (SELECT id FROM victims) RETURNING 1)
SELECT (SELECT count(*) FROM conversations) AS conversation_mapping,
    (SELECT count(*) FROM links) AS message_link,
    (SELECT count(*) FROM aliases) AS conversation_alias,
    (SELECT count(*) FROM consent) AS customer_consent"""

_IDLE = """
SELECT id FROM mapper.conversation_mapping
WHERE COALESCE(last_message_at, created_at) < now() - $2::interval
ORDER BY COALESCE(last_message_at, created_at) LIMIT $3 FOR UPDATE SKIP LOCKED"""

_OF_PORTAL = """
SELECT id FROM mapper.conversation_mapping WHERE member_id = $2 LIMIT $3 FOR UPDATE SKIP LOCKED"""

KEEP_OPT_OUTS = ["resume"]  # idle conversations: a "stop" stays (marketing stays refused)
ALL_CONSENT = ["stop", "resume"]

# A portal whose conversations moved after the uninstall (a message delivered or sent: Bitrix24 works for
# it again) was reinstalled, even if that install never reached the mapper: it is kept, the mark dropped.
_DUE_PORTALS = """
SELECT p.member_id,
    EXISTS (SELECT 1 FROM mapper.conversation_mapping c
            WHERE c.member_id = p.member_id AND c.last_message_at > p.uninstalled_at) AS active
FROM mapper.portal_uninstall p WHERE p.uninstalled_at < now() - $1::interval ORDER BY 1"""
_FORGET_UNINSTALL = (
    "DELETE FROM mapper.portal_uninstall WHERE member_id = $1 AND uninstalled_at < now() - $2::interval"
)

# What is left of a portal once its conversations are gone; the uninstall mark goes last, in the same
# statement, so a sweep that stops half way finds the portal again next time.
_DELETE_PORTAL_REST = """
WITH consent AS (
    DELETE FROM mapper.customer_consent
    WHERE phone_number_id IN (SELECT phone_number_id FROM mapper.channel_binding WHERE member_id = $1)
    RETURNING 1),
usage AS (DELETE FROM mapper.usage_monthly WHERE member_id = $1 RETURNING 1),
links AS (DELETE FROM mapper.message_link WHERE member_id = $1 RETURNING 1),
channels AS (
    DELETE FROM mapper.channel_binding WHERE member_id = $1
        AND NOT EXISTS (SELECT 1 FROM mapper.conversation_mapping c WHERE c.member_id = $1)
    RETURNING 1),
mark AS (
    DELETE FROM mapper.portal_uninstall WHERE member_id = $1
        AND NOT EXISTS (SELECT 1 FROM mapper.conversation_mapping c WHERE c.member_id = $1)
    RETURNING 1)
SELECT (SELECT count(*) FROM consent) AS customer_consent, (SELECT count(*) FROM usage) AS usage_monthly,
    (SELECT count(*) FROM links) AS message_link, (SELECT count(*) FROM channels) AS channel_binding,
    (SELECT count(*) FROM mark) AS portal_uninstall"""

# SetPortalInstalled: an uninstall is recorded (the earliest one kept); an install newer than the
# recorded uninstall clears it (a late uninstall event older than the reinstall changes nothing).
_MARK_UNINSTALLED = """
INSERT INTO mapper.portal_uninstall (member_id, uninstalled_at) VALUES ($1, $2)
ON CONFLICT (member_id) DO UPDATE SET uninstalled_at = LEAST(mapper.portal_uninstall.uninstalled_at, $2)
RETURNING uninstalled_at"""
_MARK_INSTALLED = "DELETE FROM mapper.portal_uninstall WHERE member_id = $1 AND uninstalled_at <= $2"
_UNINSTALLED_AT = "SELECT uninstalled_at FROM mapper.portal_uninstall WHERE member_id = $1"


async def set_portal_installed(
    db: Database, member_id: str, installed: bool, at: datetime
) -> datetime | None:
    """Record an uninstall (installed=False) or a new install; returns when the portal counts as
    uninstalled since (None: installed)."""
    async with db.connection() as conn:
        if not installed:
            value: datetime = await conn.fetchval(_MARK_UNINSTALLED, member_id, at)
            return value
        await conn.execute(_MARK_INSTALLED, member_id, at)
        found: datetime | None = await conn.fetchval(_UNINSTALLED_AT, member_id)
        return found


@dataclass
class Sweep:
    """Rows removed by one sweep, per table."""

    removed: dict[str, int] = field(default_factory=dict)

    def add(self, counts: Any) -> int:
        """Adds one statement's counts (a record of table -> rows); returns its total."""
        total = 0
        for table, n in dict(counts).items():
            if n:
                self.removed[table] = self.removed.get(table, 0) + n
                RETENTION_REMOVED.labels(table).inc(n)
                total += n
        return total


async def _batches(
    db: Database, sweep: Sweep, query: str, args: tuple[Any, ...], main: str, batch: int, pause_s: float
) -> None:
    """Run `query` until a batch removes fewer than `batch` rows of table `main`, pausing between."""
    while True:
        async with db.connection() as conn:
            counts = await conn.fetchrow(query, *args)
        sweep.add(counts)
        if counts[main] < batch:
            return
        await asyncio.sleep(pause_s)


def _conversations(victims: str) -> str:
    return _DELETE_CONVERSATIONS.format(victims=victims)


async def sweep_once(db: Database, mapper: MapperSettings, settings: RetentionSettings) -> Sweep:
    """One sweep over every kind of record (see the module's docstring)."""
    sweep, batch, pause = Sweep(), settings.retention_batch, settings.retention_pause_s
    dedupe = timedelta(hours=mapper.dedupe_retention_hours)
    await _batches(db, sweep, _EXPIRE_PROCESSED, (dedupe, batch), "processed_event", batch, pause)
    if settings.link_retention_days:
        age = timedelta(days=settings.link_retention_days)
        await _batches(db, sweep, _EXPIRE_LINKS, (age, batch), "message_link", batch, pause)
    if settings.conversation_idle_days:
        idle = timedelta(days=settings.conversation_idle_days)
        query = _conversations(_IDLE)
        await _batches(db, sweep, query, (KEEP_OPT_OUTS, idle, batch), "conversation_mapping", batch, pause)
    grace = timedelta(days=settings.uninstall_grace_days)
    async with db.connection() as conn:
        due = []
        for r in await conn.fetch(_DUE_PORTALS, grace):
            if r["active"]:
                await conn.execute(_FORGET_UNINSTALL, r["member_id"], grace)
                log.warning(
                    "kept a portal active since its uninstall (reinstalled)", member_id=r["member_id"]
                )
            else:
                due.append(r["member_id"])
    for member_id in due:
        query = _conversations(_OF_PORTAL)
        await _batches(
            db, sweep, query, (ALL_CONSENT, member_id, batch), "conversation_mapping", batch, pause
        )
        async with db.connection() as conn:
            sweep.add(await conn.fetchrow(_DELETE_PORTAL_REST, member_id))
        log.info("removed the data of an uninstalled portal", member_id=member_id)
    RETENTION_LAST_SUCCESS.set(time.time())
    return sweep


async def sweep_forever(
    sweep: Callable[[], Awaitable[Sweep]], interval_s: float, stopped: asyncio.Event | None = None
) -> None:
    """mapper-server: a sweep every `interval_s` (replicas may overlap: SKIP LOCKED keeps them apart)."""
    await asyncio.sleep(random.uniform(0, min(interval_s, 30.0)))  # jitter, not cryptography
    while stopped is None or not stopped.is_set():
        try:
            result = await sweep()
            if result.removed:
                log.info("retention sweep", removed=result.removed)
        except DatabaseUnavailable as exc:
            RETENTION_ERRORS.inc()
            log.warning("retention sweep skipped", error=str(exc))
        except Exception:
            RETENTION_ERRORS.inc()
            log.exception("retention sweep failed")
        await asyncio.sleep(interval_s)


async def run(mapper: MapperSettings, settings: RetentionSettings, db_settings: DatabaseSettings) -> int:
    """`mapper-retention`: one sweep; exit code 0 when it completed, 1 otherwise."""
    db = Database(
        db_settings,
        connect_timeout_s=mapper.db_connect_timeout_s,
        application_name="mapper-retention",
        required_table="mapper.portal_uninstall",
        migrate_command="mapper-migrate",
    )
    code = 1
    try:
        await db.open_until_ready(within_s=60)
        result = await sweep_once(db, mapper, settings)
        log.info("retention sweep done", removed=result.removed)
        code = 0
    except Exception:
        RETENTION_ERRORS.inc()
        log.exception("retention sweep failed")
    finally:
        await db.close()
    if settings.retention_pushgateway_url:
        try:
            namespace = settings.retention_push_namespace
            push_to_gateway(
                settings.retention_pushgateway_url,
                job="zaptrix-mapper-retention",
                registry=REGISTRY,
                grouping_key={"namespace": namespace} if namespace else None,
            )
        except OSError as exc:
            log.warning("metrics not pushed", error=str(exc))
    return code


def main() -> None:
    mapper, settings, db_settings = MapperSettings(), RetentionSettings(), DatabaseSettings()
    code: list[int] = []
    run_process(
        "mapper-retention",
        settings.log_level,
        lambda: code.append(asyncio.run(run(mapper, settings, db_settings))),
    )
    raise SystemExit(code[0] if code else 1)
