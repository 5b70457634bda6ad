"""Fault injection (POST /_sandbox/faults) and the fault suite's record (GET /_sandbox/faults/record)."""

from __future__ import annotations

from typing import Any

import httpx
from zaptrix_sandbox import formdata

from .conftest import GatewayStub

PORTAL = "sandbox-member-1"
URL = "/v23.0/100000000000001/messages"
TOKEN = {"Authorization": "Bearer sandbox-wa-token"}


def message(user: str, chat: str, mid: str, text: str) -> dict[str, Any]:
    return {
        "user": {"id": user, "name": "Anna"},
        "message": {"id": mid, "date": "1767225600", "text": text},
        "chat": {"id": chat},
    }


async def send(bitrix: httpx.AsyncClient, messages: list[dict[str, Any]]) -> httpx.Response:
    token = (await bitrix.get(f"/_sandbox/portals/{PORTAL}")).json()["access_token"]
    params = {"auth": token, "CONNECTOR": "zaptrix_whatsapp", "LINE": "1", "MESSAGES": messages}
    return await bitrix.post(
        "/rest/imconnector.send.messages.json",
        content=formdata.encode(params),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )


def text(body: str) -> dict[str, Any]:
    return {"messaging_product": "whatsapp", "to": "491701234567", "type": "text", "text": {"body": body}}


async def test_bitrix_5xx_and_timeout_phases_do_nothing(bitrix: httpx.AsyncClient) -> None:
    phases = [{"mode": "5xx", "duration_s": 60}]
    assert (await bitrix.post("/_sandbox/faults", json={"phases": phases})).status_code == 200
    r = await send(bitrix, [message("491701", "pn:491701", "wamid.f1", text="FLTx-c000001 hi")])
    assert r.status_code == 500 and r.json()["error"] == "INTERNAL_SERVER_ERROR"
    timeout = {"phases": [{"mode": "timeout", "duration_s": 60}], "hang_s": 0.2}
    assert (await bitrix.post("/_sandbox/faults", json=timeout)).status_code == 200
    r = await send(bitrix, [message("491701", "pn:491701", "wamid.f2", text="FLTx-c000002 hi")])
    assert r.status_code == 504
    view = (await bitrix.get("/_sandbox/faults")).json()
    assert view["mode_now"] == "timeout" and view["hits"] == {"timeout": 1}
    record = (await bitrix.get("/_sandbox/faults/record", params={"marker": "FLTx"})).json()
    assert record["marked"] == []  # refused or held: nothing reached a chat
    assert (await bitrix.post("/_sandbox/faults", json={"phases": []})).json()["mode_now"] == "none"
    r = await send(bitrix, [message("491701", "pn:491701", "wamid.f3", text="FLTx-c000003 hi")])
    assert r.status_code == 200
    record = (await bitrix.get("/_sandbox/faults/record", params={"marker": "FLTx"})).json()
    [m] = record["marked"]
    assert m["member_id"] == PORTAL and m["external_ids"] == ["wamid.f3"] and m["received_at"] > 0


async def test_bitrix_refuses_a_mode_it_has_not(bitrix: httpx.AsyncClient) -> None:
    r = await bitrix.post("/_sandbox/faults", json={"phases": [{"mode": "slow", "duration_s": 1}]})
    assert r.status_code == 400


async def test_graph_slow_send_is_done_then_answered_late(
    graph: httpx.AsyncClient, stub: GatewayStub
) -> None:
    await graph.post("/_sandbox/config", json={"auto_read": False, "pair_rate_per_s": 100, "pair_burst": 10})
    slow = {"phases": [{"mode": "slow", "duration_s": 60}], "delay_s": 0.3}
    assert (await graph.post("/_sandbox/faults", json=slow)).status_code == 200
    body = text("FLTy-o000001 hello") | {"biz_opaque_callback_data": "op-1"}
    r = await graph.post(URL, json=body, headers=TOKEN)
    assert r.status_code == 200
    record = (await graph.get("/_sandbox/faults/record", params={"marker": "FLTy"})).json()
    [sent] = record["sends"]
    assert sent["answer_delay_s"] == 0.3 and sent["biz_opaque_callback_data"] == "op-1"
    hooks = await stub.wait_for("/webhooks/meta", 1)  # the window is closed: one failed status
    statuses = [s for h in hooks for s in h.json()["entry"][0]["changes"][0]["value"].get("statuses", [])]
    assert statuses and all(s["biz_opaque_callback_data"] == "op-1" for s in statuses)
    await graph.post("/_sandbox/reset")
    assert (await graph.get("/_sandbox/faults")).json()["phases"] == []
