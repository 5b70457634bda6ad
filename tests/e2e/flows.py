"""Actions and observations through the stand-ins' simulator APIs (docs/sandbox.md), shared by tests/e2e and
tests/security."""

from __future__ import annotations

import itertools
from typing import Any

from zaptrix_testing.seeding import SANDBOX_MEMBER_ID, bind_sandbox_channel, chat_customer
from zaptrix_testing.waiting import eventually

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
    """The sandbox portal's chat with the customer (by user.phone, else user.id: a BSUID-only customer)."""
    for chat in await chats(system):
        if wa_id in (chat_customer(chat), str((chat.get("user") or {}).get("id"))):
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


_inbound_numbers = itertools.count(491710000000)  # apart from each other module's numbers
_outbound_numbers = itertools.count(491720000000)


def new_customer() -> str:
    """A number that has not written yet."""
    return str(next(_inbound_numbers))


async def wait_for_messages(
    system: System, wa_id: str, count: int, timeout_s: float = 20
) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    async def enough() -> bool:
        nonlocal found
        found = [m for m in await chat_messages(system, wa_id) if m["direction"] == "client"]
        return len(found) >= count

    await eventually(enough, timeout_s, f"{count} message(s) from {wa_id} in the operator's chat")
    return found


async def customer(system: System, text: str = "Hallo") -> str:
    """A customer who wrote, so the conversation exists and the 24-hour window is open."""
    wa_id = str(next(_outbound_numbers))
    await customer_says(system, wa_id, type="text", text=text)
    await wait_for_messages(system, wa_id, 1)
    return wa_id


async def wait_sent(
    system: System, wa_id: str, count: int = 1, timeout_s: float = 20
) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    async def enough() -> bool:
        nonlocal found
        found = [s for s in await sent_to(system, wa_id) if s["http_status"] == 200]
        return len(found) >= count

    await eventually(enough, timeout_s, f"{count} send(s) to {wa_id} at the Graph API stand-in")
    return found


async def bind_template(system: System, name: str) -> None:
    """Re-bind the sandbox channel with this re-engagement template ('': none)."""
    async with system.local.grpc_channel("mapper") as channel:
        await bind_sandbox_channel(channel, reengagement_template=name)
