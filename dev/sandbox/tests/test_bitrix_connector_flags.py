"""The connector's registration flags: without EDIT/DEL_INTERNAL_MESSAGES operators cannot edit or delete."""

from __future__ import annotations

from typing import Any

import httpx

PORTAL = "sandbox-member-1"
ICON = {"DATA_IMAGE": "data:image/svg+xml;charset=US-ASCII,%3Csvg%3E%3C%2Fsvg%3E"}


async def _rest(bitrix: httpx.AsyncClient, method: str, params: dict[str, Any]) -> Any:
    token = (await bitrix.get(f"/_sandbox/portals/{PORTAL}")).json()["access_token"]
    resp = await bitrix.post(f"/rest/{method}.json", json={"auth": token, **params})
    return resp.json()


async def _delivered_operator_message(bitrix: httpx.AsyncClient, wa: str) -> int:
    item = {
        "user": {"id": wa, "name": "Anna"},
        "message": {"id": f"wamid.{wa}", "date": "1767225600", "text": "Hallo"},
        "chat": {"id": f"pn:{wa}"},
    }
    await _rest(
        bitrix,
        "imconnector.send.messages",
        {"CONNECTOR": "zaptrix_whatsapp", "LINE": "1", "MESSAGES": [item]},
    )
    sent = (
        await bitrix.post(
            f"/_sandbox/portals/{PORTAL}/operator-messages", json={"chat_id": f"pn:{wa}", "text": "Hi"}
        )
    ).json()
    status = {
        "im": sent["im"],
        "message": {"id": [f"wamid.out.{wa}"], "date": "1767225700"},
        "chat": {"id": f"pn:{wa}"},
    }
    await _rest(
        bitrix,
        "imconnector.send.status.delivery",
        {"CONNECTOR": "zaptrix_whatsapp", "LINE": "1", "MESSAGES": [status]},
    )
    return int(sent["im"]["message_id"])


async def test_edit_and_delete_follow_the_registration(bitrix: httpx.AsyncClient) -> None:
    old = await _delivered_operator_message(bitrix, "491771")
    # The preregistered connector has the defaults (true): an edit reaches the gateway as an event.
    edit = await bitrix.post(f"/_sandbox/portals/{PORTAL}/operator-messages/{old}/update", json={"text": "x"})
    assert edit.status_code == 200
    registered = await _rest(
        bitrix,
        "imconnector.register",
        {
            "ID": "zaptrix_whatsapp",
            "NAME": "WhatsApp (Zaptrix)",
            "ICON": ICON,
            "PLACEMENT_HANDLER": "https://gateway.example/settings",
            "EDIT_INTERNAL_MESSAGES": "N",
            "DEL_INTERNAL_MESSAGES": "N",
            "NEWSLETTER": "N",
        },
    )
    assert registered["result"] == {"result": True}
    for action in ("update", "delete"):
        resp = await bitrix.post(
            f"/_sandbox/portals/{PORTAL}/operator-messages/{old}/{action}", json={"text": "y"}
        )
        assert resp.status_code == 409 and "INTERNAL_MESSAGES=N" in resp.json()["error"]
    chats = (await bitrix.get(f"/_sandbox/portals/{PORTAL}/chats")).json()["chats"]
    (message,) = [m for c in chats for m in c["messages"] if m["id"] == old]
    assert message["text"] == "x" and not message["deleted"]  # nothing changed by the refused actions
