"""The cost ledger end to end: the Graph stand-in prices a reply (per-message pricing, 2026 rules), the status
webhooks travel meta-ingress -> Kafka -> bitrix-dispatcher -> mapper, and the message is counted once in
its portal's month, however often Meta sends the status again (a replayed webhook: the same bytes; a new
webhook for the same status: a second Kafka record with the same event id)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
from zaptrix_testing.seeding import SANDBOX_MEMBER_ID
from zaptrix_testing.waiting import eventually

from tests.e2e.flows import customer_says, new_customer, operator_says, sent_to, wait_for_messages
from tests.system import System


async def query(system: System, sql: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(system.local.database_url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def service_messages(system: System) -> int:
    rows = await query(
        system,
        "SELECT coalesce(sum(messages), 0) AS n FROM mapper.usage_monthly WHERE member_id = $1"
        " AND month = date_trunc('month', now() AT TIME ZONE 'UTC')::date AND category = 'service'"
        " AND pricing_type = 'free_customer_service' AND NOT billable AND pricing_model = 'PMP'",
        SANDBOX_MEMBER_ID,
    )
    return int(rows[0]["n"])


async def test_a_reply_is_counted_once_in_the_ledger_whatever_meta_sends_again(system: System) -> None:
    wa_id = new_customer()
    await customer_says(system, wa_id, text="Hallo")
    await wait_for_messages(system, wa_id, 1)
    before = await service_messages(system)
    await operator_says(system, wa_id, "Guten Tag")

    async def sent() -> str | None:
        found = [s for s in await sent_to(system, wa_id) if s.get("wamid")]
        return found[0]["wamid"] if found else None

    wamid = str(await eventually(sent, what="the reply at the Graph stand-in"))

    async def counted() -> bool:
        return bool(
            await query(system, "SELECT 1 FROM mapper.message_link WHERE wamid = $1 AND usage_counted", wamid)
        )

    await eventually(counted, timeout_s=30, what=f"the ledger's record of {wamid}")
    assert await service_messages(system) == before + 1

    # Meta again: the delivered webhook replayed byte for byte, and a fresh delivered and read webhook.
    hooks = (await system.graph.get("/_sandbox/webhooks")).json()["webhooks"]
    delivered = [
        h["id"]
        for h in hooks
        if h["kind"] == "status"
        and any(
            s.get("id") == wamid and s.get("status") == "delivered"
            for e in h["payload"]["entry"]
            for c in e["changes"]
            for s in c["value"].get("statuses", [])
        )
    ]
    assert delivered, "the stand-in sent a delivered webhook"
    replay = await system.graph.post(f"/_sandbox/webhooks/{delivered[0]}/replay")
    assert replay.json()["gateway_status"] == 200
    for status in ("delivered", "read"):
        again = await system.graph.post("/_sandbox/statuses", json={"wamid": wamid, "status": status})
        assert again.json()["gateway_status"] == 200, again.text

    async def read_recorded() -> bool:
        rows = await query(system, "SELECT whatsapp_status FROM mapper.message_link WHERE wamid = $1", wamid)
        return bool(rows) and rows[0]["whatsapp_status"] == "read"

    await eventually(read_recorded, timeout_s=30, what="the read status on the link")
    await asyncio.sleep(2)  # the redelivered events have been consumed by now (the read came after them)
    assert await service_messages(system) == before + 1


async def test_an_uninstall_schedules_the_portals_removal_and_a_reinstall_cancels_it(system: System) -> None:
    """ONAPPUNINSTALL through bitrix-ingress, Kafka and the meta dispatcher reaches the mapper (mutual TLS,
    its caller row); the next install through the verified flow clears it."""
    member = f"tenant-{uuid.uuid4().hex[:10]}"
    resp = await system.bitrix.post(
        "/_sandbox/portals", json={"member_id": member, "domain": f"{member}.bitrix24.com", "line_id": 5}
    )
    assert resp.status_code == 201, resp.text
    assert (await system.bitrix.post(f"/_sandbox/portals/{member}/install")).json()["status_code"] == 200
    gone = (await system.bitrix.post(f"/_sandbox/portals/{member}/uninstall")).json()
    assert gone["status_code"] == 200, gone

    async def marked() -> bool:
        sql = "SELECT 1 FROM mapper.portal_uninstall WHERE member_id = $1"
        return bool(await query(system, sql, member))

    await eventually(marked, timeout_s=30, what=f"the uninstall of {member} recorded by the mapper")
    assert (await system.bitrix.post(f"/_sandbox/portals/{member}/install")).json()["status_code"] == 200

    async def cleared() -> bool:
        return not await marked()

    await eventually(cleared, timeout_s=30, what=f"the reinstall of {member} clearing the mark")
