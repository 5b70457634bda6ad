"""im.message.add into an Open Lines chat: a system notice stays in the chat, errors as documented."""

from __future__ import annotations

from typing import Any

import httpx

PORTAL = "sandbox-member-1"


async def token_of(bitrix: httpx.AsyncClient, member_id: str = PORTAL) -> str:
    return str((await bitrix.get(f"/_sandbox/portals/{member_id}")).json()["access_token"])


def message(user: str, chat: str, mid: str) -> dict[str, Any]:
    return {
        "user": {"id": user, "name": "Anna"},
        "message": {"id": mid, "date": "1767225600", "text": "Hallo"},
        "chat": {"id": chat},
    }


async def send(bitrix: httpx.AsyncClient, messages: list[dict[str, Any]]) -> httpx.Response:
    params = {
        "auth": await token_of(bitrix),
        "CONNECTOR": "zaptrix_whatsapp",
        "LINE": "1",
        "MESSAGES": messages,
    }
    return await bitrix.post("/rest/imconnector.send.messages.json", json=params)


async def _chat_id(bitrix: httpx.AsyncClient) -> int:
    r = await send(bitrix, [message("491799", "pn:491799", "wamid.im1")])
    return int(r.json()["result"]["DATA"]["RESULT"][0]["session"]["CHAT_ID"])


async def _add(bitrix: httpx.AsyncClient, **params: str) -> httpx.Response:
    return await bitrix.post("/rest/im.message.add.json", json={"auth": await token_of(bitrix), **params})


async def test_a_system_message_stays_in_the_chat_and_is_not_sent_to_the_connector(
    bitrix: httpx.AsyncClient,
) -> None:
    chat_id = await _chat_id(bitrix)
    events_before = len((await bitrix.get(f"/_sandbox/portals/{PORTAL}/events")).json()["events"])
    r = await _add(bitrix, DIALOG_ID=f"chat{chat_id}", MESSAGE="⚠️ Zaptrix: not delivered", SYSTEM="Y")
    assert r.status_code == 200 and isinstance(r.json()["result"], int)
    chats = (await bitrix.get(f"/_sandbox/portals/{PORTAL}/chats")).json()["chats"]
    (chat,) = [c for c in chats if c["chat_id"] == chat_id]
    assert [(m["direction"], m["text"]) for m in chat["messages"]][-1] == (
        "system",
        "⚠️ Zaptrix: not delivered",
    )
    events = (await bitrix.get(f"/_sandbox/portals/{PORTAL}/events")).json()["events"]
    assert len(events) == events_before  # no ONIMCONNECTORMESSAGEADD for it


async def test_im_message_add_errors(bitrix: httpx.AsyncClient) -> None:
    chat_id = await _chat_id(bitrix)
    assert (await _add(bitrix, DIALOG_ID=f"chat{chat_id}", SYSTEM="Y")).json()["error"] == "MESSAGE_EMPTY"
    assert (await _add(bitrix, MESSAGE="x")).json()["error"] == "CHAT_ID_EMPTY"
    assert (await _add(bitrix, DIALOG_ID="chat999999", MESSAGE="x")).json()["error"] == "ACCESS_ERROR"
    for member, extra, error in (
        ("im-no-member", {"im_chat_access": False}, "ACCESS_ERROR"),
        ("im-no-scope", {"scope": "imopenlines,imconnector,crm,placement"}, "insufficient_scope"),
    ):
        spec = {"member_id": member, "domain": f"{member}.bitrix24.com", "preregistered": True, **extra}
        assert (await bitrix.post("/_sandbox/portals", json=spec)).status_code == 201
        token = await token_of(bitrix, member)
        sent = await bitrix.post(
            "/rest/imconnector.send.messages.json",
            json={
                "auth": token,
                "CONNECTOR": "zaptrix_whatsapp",
                "LINE": "1",
                "MESSAGES": [message("491798", "pn:491798", "wamid.im2")],
            },
        )
        other = int(sent.json()["result"]["DATA"]["RESULT"][0]["session"]["CHAT_ID"])
        r = await bitrix.post(
            "/rest/im.message.add.json",
            json={"auth": token, "DIALOG_ID": f"chat{other}", "MESSAGE": "x", "SYSTEM": "Y"},
        )
        assert r.json()["error"] == error
