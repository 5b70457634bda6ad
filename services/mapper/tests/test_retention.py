"""Retention on real PostgreSQL: old rows go in small batches, young rows stay, tenants stay apart, and an
uninstalled portal's data goes only after the grace period."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta

import pytest
from mapper.retention import sweep_once
from mapper.settings import MapperSettings, RetentionSettings
from mapper_support import Mapper
from prometheus_client import REGISTRY
from zaptrix.v1 import mapper_pb2 as pb
from zaptrix_testing.processes import console_script

KEEP = RetentionSettings(
    link_retention_days=90,
    conversation_idle_days=365,
    uninstall_grace_days=30,
    retention_batch=2,
    retention_pause_s=0,
)


async def seed(
    mapper: Mapper, pnid: str, member: str, wa_id: str, *, idle_days: int, link_days: list[int]
) -> str:
    """A conversation last active `idle_days` ago with one outbound link per age in `link_days`."""
    await mapper.bind(pnid, member)
    conv = await mapper.conversation(pnid, wa_id)
    for n, days in enumerate(link_days):
        wamid = f"{pnid}.{wa_id}.{n}"
        await mapper.stub.LinkMessage(
            pb.LinkMessageRequest(
                link=pb.MessageLink(wamid=wamid, conversation_id=conv.id, direction=pb.DIRECTION_OUTBOUND)
            )
        )
        await mapper.sql(
            "UPDATE mapper.message_link SET created_at = now() - $2::interval WHERE wamid = $1",
            wamid,
            timedelta(days=days),
        )
    await mapper.sql(
        "UPDATE mapper.conversation_mapping SET last_message_at = now() - $2::interval,"
        " created_at = now() - $2::interval WHERE id = $1::uuid",
        conv.id,
        timedelta(days=idle_days),
    )
    return conv.id


async def consent(mapper: Mapper, pnid: str, wa_id: str, value: str, category: str) -> None:
    c = pb.CustomerConsent(phone_number_id=pnid, wa_id=wa_id, category=category, value=value)
    c.changed_at.FromDatetime(datetime.now(UTC) - timedelta(days=400))
    await mapper.stub.RecordCustomerConsent(c)


async def count(mapper: Mapper, table: str, where: str = "true", *args: object) -> int:
    rows = await mapper.sql(f"SELECT count(*) AS n FROM mapper.{table} WHERE {where}", *args)
    return int(rows[0]["n"])


def removed(table: str) -> float:
    return REGISTRY.get_sample_value("zaptrix_retention_removed_total", {"table": table}) or 0.0


async def test_old_rows_go_young_rows_stay(mapper: Mapper) -> None:
    young = await seed(mapper, "1001", "portal-a", "491", idle_days=1, link_days=[1, 89, 91, 200, 300])
    idle = await seed(mapper, "1001", "portal-a", "492", idle_days=400, link_days=[10, 400])
    other = await seed(mapper, "2002", "portal-b", "491", idle_days=364, link_days=[2])
    await consent(mapper, "1001", "492", "stop", "marketing_messages")  # an opt-out outlives the conversation
    await consent(mapper, "1001", "492", "resume", "other_category")
    for event_id, days in (("old.1", 9), ("old.2", 20), ("old.3", 30), ("young.1", 7), ("young.2", 0)):
        await mapper.sql(
            "INSERT INTO mapper.processed_event (event_id, processed_at) VALUES ($1, now() - $2::interval)",
            event_id,
            timedelta(days=days),
        )
    before = {t: removed(t) for t in ("processed_event", "message_link", "conversation_mapping")}

    sweep = await sweep_once(mapper.db, MapperSettings(), KEEP)

    # Dedupe: 8 days (past Meta's 7-day retries); links: 90 days; conversations: 365 idle days.
    assert sorted(r["event_id"] for r in await mapper.sql("SELECT event_id FROM mapper.processed_event")) == [
        "young.1",
        "young.2",
    ]
    links = await mapper.sql("SELECT wamid FROM mapper.message_link ORDER BY wamid")
    assert [r["wamid"] for r in links] == ["1001.491.0", "1001.491.1", "2002.491.0"]
    conversations = {str(r["id"]) for r in await mapper.sql("SELECT id FROM mapper.conversation_mapping")}
    assert conversations == {young, other}
    assert await count(mapper, "conversation_alias", "conversation_id = $1::uuid", idle) == 0
    kept = await mapper.sql("SELECT wa_id, category, value FROM mapper.customer_consent")
    assert [tuple(r) for r in kept] == [("492", "marketing_messages", "stop")]
    assert sweep.removed == {
        "processed_event": 3,
        # 91, 200, 300 days (batches of 2) and the idle conversation's 400-day one by age; its 10-day one
        # with the conversation.
        "message_link": 5,
        "conversation_mapping": 1,
        "conversation_alias": 1,
        "customer_consent": 1,
    }
    assert removed("processed_event") - before["processed_event"] == 3
    assert removed("conversation_mapping") - before["conversation_mapping"] == 1
    last = REGISTRY.get_sample_value("zaptrix_retention_last_success_timestamp_seconds") or 0
    assert abs(last - datetime.now(UTC).timestamp()) < 60
    # A second sweep finds nothing more.
    assert (await sweep_once(mapper.db, MapperSettings(), KEEP)).removed == {}


async def test_zero_days_keeps_a_kind_forever(mapper: Mapper) -> None:
    await seed(mapper, "1001", "portal-a", "491", idle_days=4000, link_days=[4000])
    forever = KEEP.model_copy(update={"link_retention_days": 0, "conversation_idle_days": 0})
    assert (await sweep_once(mapper.db, MapperSettings(), forever)).removed == {}
    assert await count(mapper, "message_link") == 1


async def test_an_uninstalled_portal_goes_after_the_grace_period_and_only_it(mapper: Mapper) -> None:
    # portal a: its last messages before the uninstall 31 days ago (nothing moved since)
    await seed(mapper, "1001", "portal-a", "491", idle_days=32, link_days=[1, 2, 3])
    await seed(mapper, "1002", "portal-a", "492", idle_days=40, link_days=[1])
    await seed(mapper, "2002", "portal-b", "491", idle_days=1, link_days=[1])
    await seed(mapper, "3003", "portal-c", "491", idle_days=1, link_days=[1])
    await consent(mapper, "1001", "491", "stop", "marketing_messages")
    await mapper.sql(
        "INSERT INTO mapper.usage_monthly (member_id, phone_number_id, month, category, pricing_type,"
        " pricing_model, billable, messages) VALUES ('portal-a', '1001', '2026-11-01', 'service', 'regular',"
        " 'PMP', true, 5), ('portal-b', '2002', '2026-11-01', 'service', 'regular', 'PMP', true, 7)"
    )
    now = datetime.now(UTC)

    async def uninstall(member: str, days_ago: int) -> pb.SetPortalInstalledResponse:
        req = pb.SetPortalInstalledRequest(member_id=member, installed=False)
        req.at.FromDatetime(now - timedelta(days=days_ago))
        return await mapper.stub.SetPortalInstalled(req)

    answer = await uninstall("portal-a", 31)
    assert answer.purge_after.ToDatetime(tzinfo=UTC) < now
    await uninstall("portal-b", 5)  # inside the grace period
    await uninstall("portal-c", 40)
    back = pb.SetPortalInstalledRequest(member_id="portal-c", installed=True)
    back.at.FromDatetime(now - timedelta(days=1))  # reinstalled: kept
    await mapper.stub.SetPortalInstalled(back)
    # portal d was reinstalled but the install never reached the mapper: its chats moved since (a message
    # delivered 1 day ago, after the uninstall 35 days ago), so it is kept too and its mark dropped.
    await seed(mapper, "4004", "portal-d", "491", idle_days=1, link_days=[1])
    await uninstall("portal-d", 35)

    await sweep_once(mapper.db, MapperSettings(), KEEP)

    for table in ("channel_binding", "conversation_mapping", "message_link", "usage_monthly"):
        assert await count(mapper, table, "member_id = 'portal-a'") == 0, table
        assert await count(mapper, table, "member_id = 'portal-b'") == 1, table
    assert await count(mapper, "customer_consent") == 0
    assert await count(mapper, "conversation_mapping", "member_id = 'portal-c'") == 1
    assert await count(mapper, "conversation_mapping", "member_id = 'portal-d'") == 1
    marks = await mapper.sql("SELECT member_id FROM mapper.portal_uninstall ORDER BY 1")
    assert [r["member_id"] for r in marks] == ["portal-b"]


@pytest.mark.processes
async def test_mapper_retention_runs_one_sweep_and_exits(mapper: Mapper) -> None:
    await seed(mapper, "1001", "portal-a", "491", idle_days=1, link_days=[1, 100])
    proc = await asyncio.create_subprocess_exec(
        console_script("mapper-retention"),
        env={**os.environ, "ZAPTRIX_DATABASE_URL": mapper.dsn, "ZAPTRIX_RETENTION_BATCH": "1"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()[-2000:]
    assert b"retention sweep done" in out
    assert await count(mapper, "message_link") == 1
    bad = await asyncio.create_subprocess_exec(
        console_script("mapper-retention"),
        env={**os.environ, "ZAPTRIX_DATABASE_URL": mapper.dsn.rsplit("/", 1)[0] + "/postgres"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    await asyncio.wait_for(bad.communicate(), 60)
    assert bad.returncode == 1  # an unmigrated database: the CronJob's run fails visibly


async def test_the_server_sweeps_periodically_until_stopped(mapper: Mapper) -> None:
    from mapper.retention import sweep_forever

    await seed(mapper, "1001", "portal-a", "491", idle_days=1, link_days=[1, 100])
    stopped = asyncio.Event()
    task = asyncio.create_task(
        sweep_forever(lambda: sweep_once(mapper.db, MapperSettings(), KEEP), 0.05, stopped)
    )
    try:
        for _ in range(200):
            if await count(mapper, "message_link") == 1:
                break
            await asyncio.sleep(0.05)
        assert await count(mapper, "message_link") == 1
        await seed(mapper, "1002", "portal-a", "492", idle_days=1, link_days=[120])  # a later old one too
        for _ in range(200):
            if await count(mapper, "message_link") == 1:
                break
            await asyncio.sleep(0.05)
        assert await count(mapper, "message_link") == 1
    finally:
        stopped.set()
        await asyncio.wait_for(task, 5)
