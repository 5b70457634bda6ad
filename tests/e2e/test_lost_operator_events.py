"""Operator messages whose OnImConnectorMessageAdd never reached us (Bitrix24 never resends an event): the
offline-event reconciler in bitrix-dispatcher picks them up, and a message that came both ways goes out once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from zaptrix_testing.seeding import SANDBOX_MEMBER_ID
from zaptrix_testing.waiting import eventually

from tests.e2e.flows import customer, external_chat_id, sent_to, wait_sent
from tests.system import System

ADD = "ONIMCONNECTORMESSAGEADD"


@pytest.fixture
async def online_events_lost(system: System) -> AsyncIterator[None]:
    """The stand-in drops the online delivery of every operator message (the lost event)."""
    await system.bitrix.post("/_sandbox/config", json={"drop_online_events": [ADD]})
    try:
        yield
    finally:
        await system.bitrix.post("/_sandbox/config", json={"drop_online_events": []})


async def offline_queue(system: System) -> list[dict[str, Any]]:
    resp = await system.bitrix.get(f"/_sandbox/portals/{SANDBOX_MEMBER_ID}/offline-events")
    resp.raise_for_status()
    return list(resp.json()["offline_events"])


async def operator_writes(system: System, wa_id: str, text: str) -> dict[str, Any]:
    resp = await system.bitrix.post(
        f"/_sandbox/portals/{SANDBOX_MEMBER_ID}/operator-messages",
        json={"chat_id": await external_chat_id(system, wa_id), "text": text},
    )
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def bodies_sent(system: System, wa_id: str) -> list[str]:
    return [
        s["payload"]["text"]["body"].split("\n")[-1]
        for s in await sent_to(system, wa_id)
        if s["http_status"] == 200
    ]


async def drained(system: System, message_id: int) -> None:
    async def gone() -> bool:
        return not any(
            str(r["EVENT_DATA"]["MESSAGES"][0]["im"]["message_id"]) == str(message_id)
            for r in await offline_queue(system)
        )

    await eventually(gone, 20, f"the offline record of message {message_id} confirmed (event.offline.clear)")


async def test_install_binds_the_operator_message_event_offline_too(system: System) -> None:
    token = (await system.bitrix.get(f"/_sandbox/portals/{SANDBOX_MEMBER_ID}")).json()["access_token"]
    bound = (await system.bitrix.post("/rest/event.get", json={"auth": token})).json()["result"]
    assert {"event": ADD, "handler": "", "auth_type": "0", "offline": 1} in bound
    assert any(b["event"] == ADD and not b["offline"] for b in bound)  # the online fast path stays


async def test_an_operator_message_whose_event_was_lost_reaches_the_customer_once(
    system: System, online_events_lost: None
) -> None:
    wa_id = await customer(system)
    reply = await operator_writes(system, wa_id, "trotzdem angekommen")
    assert reply["gateway_status"] is None and "dropped" in reply["error"]  # the online event never came
    await wait_sent(system, wa_id)
    await drained(system, reply["im"]["message_id"])
    await asyncio.sleep(1.0)  # a second copy would be sent by now
    assert await bodies_sent(system, wa_id) == ["trotzdem angekommen"]


async def test_an_operator_message_that_came_online_and_offline_goes_out_once(system: System) -> None:
    wa_id = await customer(system)
    reply = await operator_writes(system, wa_id, "nur einmal")
    assert reply["gateway_status"] == 200
    await wait_sent(system, wa_id)
    await drained(system, reply["im"]["message_id"])  # the reconciler produced its copy too
    await asyncio.sleep(1.0)
    assert await bodies_sent(system, wa_id) == ["nur einmal"]
