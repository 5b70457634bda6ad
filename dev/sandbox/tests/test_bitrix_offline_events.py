"""Offline events in the Bitrix24 stand-in: event.bind(event_type=offline), feature.get, event.offline.*,
and the switch that drops the online delivery of an event (the lost event a reconciler must recover)."""

from __future__ import annotations

from typing import Any

import httpx

from .conftest import GatewayStub

PORTAL = "sandbox-member-1"
CHAT = "100000000000001:491701234567"
ADD = "ONIMCONNECTORMESSAGEADD"


async def customer_chat(bitrix: httpx.AsyncClient) -> str:
    """The customer writes first (an operator can only answer an existing chat); returns its internal id."""
    r = await rest(
        bitrix,
        "imconnector.send.messages",
        CONNECTOR="zaptrix_whatsapp",
        LINE=1,
        MESSAGES=[
            {
                "user": {"id": "491701234567", "name": "Anna"},
                "chat": {"id": CHAT},
                "message": {"id": "wamid.in", "date": "1767225600", "text": "Hallo"},
            }
        ],
    )
    return str(r.json()["result"]["DATA"]["RESULT"][0]["session"]["CHAT_ID"])


async def token_of(bitrix: httpx.AsyncClient) -> str:
    return str((await bitrix.get(f"/_sandbox/portals/{PORTAL}")).json()["access_token"])


async def rest(bitrix: httpx.AsyncClient, method: str, **params: Any) -> httpx.Response:
    return await bitrix.post(f"/rest/{method}", json={"auth": await token_of(bitrix), **params})


async def bind_offline(bitrix: httpx.AsyncClient) -> None:
    r = await rest(bitrix, "event.bind", event="OnImConnectorMessageAdd", event_type="offline")
    assert r.json()["result"] is True, r.json()


async def operator_says(bitrix: httpx.AsyncClient, text: str) -> dict[str, Any]:
    r = await bitrix.post(
        f"/_sandbox/portals/{PORTAL}/operator-messages", json={"chat_id": CHAT, "text": text}
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_offline_binding_needs_no_handler_and_shows_in_event_get(bitrix: httpx.AsyncClient) -> None:
    await bind_offline(bitrix)
    again = await rest(bitrix, "event.bind", event="OnImConnectorMessageAdd", event_type="offline")
    assert again.status_code == 400  # bound once
    bound = (await rest(bitrix, "event.get")).json()["result"]
    assert {"event": ADD, "handler": "", "auth_type": "0", "offline": 1} in bound


async def test_offline_binding_is_refused_to_a_non_admin(bitrix: httpx.AsyncClient) -> None:
    employee = (await bitrix.post(f"/_sandbox/portals/{PORTAL}/tokens", json={"user_id": 7})).json()
    r = await bitrix.post(
        "/rest/event.bind",
        json={"auth": employee["access_token"], "event": "OnImConnectorMessageAdd", "event_type": "offline"},
    )
    assert r.status_code == 403 and r.json()["error"] == "ACCESS_DENIED"


async def test_feature_get_answers_the_offline_extended_mode(bitrix: httpx.AsyncClient) -> None:
    assert (await rest(bitrix, "feature.get", CODE="rest_offline_extended")).json()["result"] == {
        "value": "Y"
    }
    empty = await rest(bitrix, "feature.get", CODE="")
    assert empty.status_code == 400 and empty.json()["error"] == "CODE_EMPTY"


async def test_operator_message_is_queued_with_the_online_events_data(
    bitrix: httpx.AsyncClient, stub: GatewayStub
) -> None:
    chat_id = await customer_chat(bitrix)
    await bind_offline(bitrix)
    sent = await operator_says(bitrix, "Guten Tag")
    assert sent["status_code"] == 200  # the online event still goes out
    got = (await rest(bitrix, "event.offline.get", filter={"=EVENT_NAME": ADD}, clear=0)).json()["result"]
    [record] = got["events"]
    assert got["process_id"]
    assert set(record) == {"ID", "TIMESTAMP_X", "EVENT_NAME", "EVENT_DATA", "EVENT_ADDITIONAL", "MESSAGE_ID"}
    assert record["EVENT_NAME"] == ADD
    [item] = record["EVENT_DATA"]["MESSAGES"]
    assert item["im"] == {"chat_id": chat_id, "message_id": str(sent["im"]["message_id"])}
    assert item["chat"]["id"] == CHAT and item["message"]["text"].endswith("Guten Tag")
    # reserved: a second reader without the process id gets nothing; with it, the same record again
    assert (await rest(bitrix, "event.offline.get", clear=0)).json()["result"]["events"] == []
    again = await rest(bitrix, "event.offline.get", clear=0, process_id=got["process_id"])
    assert [e["ID"] for e in again.json()["result"]["events"]] == [record["ID"]]
    cleared = await rest(
        bitrix, "event.offline.clear", process_id=got["process_id"], message_id=[record["MESSAGE_ID"]]
    )
    assert cleared.json()["result"] is True
    listed = (await rest(bitrix, "event.offline.list")).json()
    assert listed["result"] == [] and listed["total"] == 0


async def test_dropped_online_event_reaches_only_the_offline_queue(
    bitrix: httpx.AsyncClient, stub: GatewayStub
) -> None:
    await customer_chat(bitrix)
    await bind_offline(bitrix)
    await bitrix.post("/_sandbox/config", json={"drop_online_events": [ADD]})
    sent = await operator_says(bitrix, "verloren")
    assert sent["status_code"] is None and "dropped" in sent["error"]
    assert stub.on("/webhooks/bitrix24/outbound") == []
    queued = (await bitrix.get(f"/_sandbox/portals/{PORTAL}/offline-events")).json()["offline_events"]
    assert [r["EVENT_DATA"]["MESSAGES"][0]["message"]["text"].endswith("verloren") for r in queued] == [True]


async def test_default_get_deletes_and_limit_defaults_to_50(bitrix: httpx.AsyncClient) -> None:
    await customer_chat(bitrix)
    await bind_offline(bitrix)
    for n in range(52):
        await operator_says(bitrix, f"m{n}")
    first = (await rest(bitrix, "event.offline.get")).json()["result"]
    assert first["process_id"] is None and len(first["events"]) == 50
    rest_of = (await rest(bitrix, "event.offline.get")).json()["result"]["events"]
    assert len(rest_of) == 2
    assert (await rest(bitrix, "event.offline.list")).json()["total"] == 0


async def test_parked_record_comes_back_only_with_error_1(bitrix: httpx.AsyncClient) -> None:
    await customer_chat(bitrix)
    await bind_offline(bitrix)
    await operator_says(bitrix, "kaputt")
    got = (await rest(bitrix, "event.offline.get", clear=0)).json()["result"]
    [record] = got["events"]
    await rest(bitrix, "event.offline.error", process_id=got["process_id"], message_id=[record["MESSAGE_ID"]])
    assert (await rest(bitrix, "event.offline.get", clear=0)).json()["result"]["events"] == []
    parked = (await rest(bitrix, "event.offline.get", clear=0, error=1)).json()["result"]["events"]
    assert [p["ID"] for p in parked] == [record["ID"]]


async def test_without_the_extended_mode_clear_0_still_deletes(bitrix: httpx.AsyncClient) -> None:
    new = {"member_id": "sandbox-basic", "domain": "basic.bitrix24.com", "offline_extended": False}
    assert (await bitrix.post("/_sandbox/portals", json=new)).status_code == 201
    token = (await bitrix.get("/_sandbox/portals/sandbox-basic")).json()["access_token"]
    answer = await bitrix.post("/rest/feature.get", json={"auth": token, "CODE": "rest_offline_extended"})
    assert answer.json()["result"] == {"value": "N"}
    got = await bitrix.post("/rest/event.offline.get", json={"auth": token, "clear": 0})
    assert got.json()["result"] == {"process_id": None, "events": []}
