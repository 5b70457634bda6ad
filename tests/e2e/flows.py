"""Actions and observations through the stand-ins' simulator APIs (docs/sandbox.md)."""

from __future__ import annotations

from typing import Any

from zaptrix_testing.seeding import SANDBOX_MEMBER_ID

from tests.system import System


async def external_chat_id(system: System, wa_id: str) -> str:
    """The chat id the gateway gave the customer's chat, as the Bitrix24 stand-in recorded it (it is opaque:
    nothing derives it from the phone number)."""
    chat = await chat_of(system, wa_id)
    assert chat is not None, f"no chat for {wa_id} in the Bitrix24 stand-in"
    return str(chat["external_chat_id"])


async def customer_says(system: System, wa_id: str, **spec: Any) -> dict[str, Any]:
    """The customer writes; returns the stand-in's answer (wamid, gateway_status, payload)."""
    resp = await system.graph.post(f"/_sandbox/customers/{wa_id}/messages", json=spec)
    resp.raise_for_status()
    body: dict[str, Any] = resp.json()
    assert body["gateway_status"] == 200, body
    return body


async def chats(system: System) -> list[dict[str, Any]]:
    resp = await system.bitrix.get(f"/_sandbox/portals/{SANDBOX_MEMBER_ID}/chats")
    resp.raise_for_status()
    data = resp.json()
    return list(data["chats"] if isinstance(data, dict) else data)


async def chat_of(system: System, wa_id: str) -> dict[str, Any] | None:
    """The sandbox portal's chat with the customer (the stand-in's external user id is the wa_id)."""
    for chat in await chats(system):
        if str((chat.get("user") or {}).get("id")) == wa_id:
            return chat
    return None


async def chat_messages(system: System, wa_id: str) -> list[dict[str, Any]]:
    chat = await chat_of(system, wa_id)
    return list(chat["messages"]) if chat else []


async def operator_says(system: System, wa_id: str, text: str, **extra: Any) -> dict[str, Any]:
    resp = await system.bitrix.post(
        f"/_sandbox/portals/{SANDBOX_MEMBER_ID}/operator-messages",
        json={"chat_id": await external_chat_id(system, wa_id), "text": text, **extra},
    )
    body: dict[str, Any] = resp.json()
    assert resp.status_code == 200 and body["gateway_status"] == 200, body
    return body


async def sent_to(system: System, wa_id: str) -> list[dict[str, Any]]:
    resp = await system.graph.get("/_sandbox/sent", params={"to": wa_id})
    resp.raise_for_status()
    data = resp.json()
    return list(data["sent"] if isinstance(data, dict) else data)
