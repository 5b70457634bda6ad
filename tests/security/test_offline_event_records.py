"""Hostile records in a portal's offline-event queue (what bitrix-dispatcher's reconciler reads back with
event.offline.get): each is parked on the portal with event.offline.error, nothing reaches WhatsApp, and the
loop goes on draining (docs/reconciliation.md). Records are put in the queue through the Bitrix24 stand-in's
fault-injection endpoint, as a compromised or buggy portal could hand them out."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

from zaptrix_testing.seeding import CONNECTOR_ID, SANDBOX_LINE_ID, SANDBOX_MEMBER_ID
from zaptrix_testing.waiting import eventually

from tests.e2e.flows import customer_says, external_chat_id, sent_to, wait_for_messages, wait_sent
from tests.system import System

ADD = "ONIMCONNECTORMESSAGEADD"
_numbers = itertools.count(491750000000)  # apart from each other module's numbers
_message_ids = itertools.count(990000)


async def customer(system: System) -> tuple[str, str]:
    """A customer of the sandbox portal who wrote (window open): (wa_id, its external chat id)."""
    wa_id = str(next(_numbers))
    await customer_says(system, wa_id, type="text", text="Hallo")
    await wait_for_messages(system, wa_id, 1)
    return wa_id, await external_chat_id(system, wa_id)


def event_data(chat: str, text: str) -> dict[str, Any]:
    mid = str(next(_message_ids))
    return {
        "CONNECTOR": CONNECTOR_ID,
        "LINE": str(SANDBOX_LINE_ID),
        "MESSAGES": [
            {"im": {"chat_id": "9001", "message_id": mid}, "message": {"text": text}, "chat": {"id": chat}}
        ],
    }


async def inject(system: System, member_id: str, data: Any) -> str:
    resp = await system.bitrix.post(
        f"/_sandbox/portals/{member_id}/offline-events", json={"event_name": ADD, "event_data": data}
    )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["queued"])


async def parked(system: System, member_id: str, record_id: str) -> None:
    async def is_parked() -> bool:
        resp = await system.bitrix.get(f"/_sandbox/portals/{member_id}/offline-events")
        return any(r["ID"] == record_id and r["ERROR"] == 1 for r in resp.json()["offline_events"])

    await eventually(is_parked, 20, f"record {record_id} parked with event.offline.error")


async def test_a_record_naming_another_portals_chat_is_parked_and_nothing_is_sent(system: System) -> None:
    wa_id, chat_of_a = await customer(system)
    member_b = f"tenant-b-{uuid.uuid4().hex[:8]}"
    created = await system.bitrix.post(
        "/_sandbox/portals", json={"member_id": member_b, "domain": f"{member_b}.bitrix24.com"}
    )
    assert created.status_code == 201, created.text
    installed = (await system.bitrix.post(f"/_sandbox/portals/{member_b}/install")).json()
    assert installed["status_code"] == 200, installed  # B is a genuine, installed tenant
    record = await inject(system, member_b, event_data(chat_of_a, "Geheim von B"))
    await parked(system, member_b, record)
    assert await sent_to(system, wa_id) == []


async def test_malformed_records_are_parked_and_the_loop_goes_on(system: System) -> None:
    wa_id, chat = await customer(system)
    bad = [
        await inject(system, SANDBOX_MEMBER_ID, "not a map"),
        await inject(system, SANDBOX_MEMBER_ID, {"CONNECTOR": CONNECTOR_ID, "MESSAGES": "nope"}),
        await inject(system, SANDBOX_MEMBER_ID, {"MESSAGES": [{"im": {"message_id": "x"}}]}),
    ]
    for record in bad:
        await parked(system, SANDBOX_MEMBER_ID, record)
    await inject(system, SANDBOX_MEMBER_ID, event_data(chat, "danach"))  # the next record still goes out
    [sent] = await wait_sent(system, wa_id)
    assert sent["payload"]["text"]["body"] == "danach"


async def test_a_huge_record_is_parked_unread(system: System) -> None:
    wa_id, chat = await customer(system)
    record = await inject(system, SANDBOX_MEMBER_ID, event_data(chat, "x" * 2_000_000))
    await parked(system, SANDBOX_MEMBER_ID, record)
    assert await sent_to(system, wa_id) == []
