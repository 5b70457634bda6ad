"""Coexistence and consent across the real system with the stand-ins: what the business wrote from the
WhatsApp Business app shows as the business's line (never the customer's, never sent to WhatsApp again),
and a customer's marketing opt-out is shown to the operator."""

from __future__ import annotations

import asyncio
from typing import Any

from zaptrix_testing.waiting import eventually

from tests.e2e.flows import (
    bind_template,
    chat_messages,
    chat_of,
    customer,
    customer_says,
    new_customer,
    operator_says,
    sent_to,
    wait_for_messages,
    wait_sent,
)
from tests.system import System


async def business_app(system: System, wa_id: str, case: str, **body: Any) -> dict[str, Any]:
    resp = await system.graph.post(f"/_sandbox/customers/{wa_id}/{case}", json=body)
    resp.raise_for_status()
    answer: dict[str, Any] = resp.json()
    assert answer["gateway_status"] == 200, answer
    return answer


async def system_lines(system: System, wa_id: str, needle: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    async def shown() -> bool:
        nonlocal found
        found = [m for m in await chat_messages(system, wa_id) if needle in m["text"]]
        return bool(found)

    await eventually(shown, 20, f"{needle!r} in the chat of {wa_id}")
    return found


async def test_an_echo_shows_as_the_business_and_is_not_sent_back(system: System) -> None:
    wa_id = await customer(system, "Haben Sie heute offen?")
    await business_app(system, wa_id, "echo", text="Ja, bis 18 Uhr (vom Handy)")
    [line] = await system_lines(system, wa_id, "bis 18 Uhr")
    assert line["direction"] == "system"  # im.message.add SYSTEM=Y: not the customer's bubble
    assert line["text"].startswith("🏢 Business (WhatsApp Business app):")
    # The operator writes after the echo is shown: that reply is the only send to the customer.
    await operator_says(system, wa_id, "Gern geschehen")
    await wait_sent(system, wa_id, 1)
    sends = await sent_to(system, wa_id)
    assert ["bis 18 Uhr" in str(s) for s in sends] == [False] * len(sends)


async def test_a_marketing_opt_out_is_shown_to_the_operator(system: System) -> None:
    wa_id = await customer(system)
    await business_app(system, wa_id, "preferences", value="stop")
    [line] = await system_lines(system, wa_id, "stopped marketing messages")
    assert line["direction"] == "system"
    await business_app(system, wa_id, "preferences", value="resume")
    await system_lines(system, wa_id, "resumed marketing messages")


async def test_an_opted_out_customer_gets_no_marketing_template_and_the_operator_is_told(
    system: System,
) -> None:
    await bind_template(system, "promo_offer")  # named a MARKETING template in tests/system.py
    try:
        await asyncio.sleep(1.5)  # the dispatcher's channel cache (0.5 s in these tests)
        wa_id = await customer(system)
        await business_app(system, wa_id, "preferences", value="stop")
        await system_lines(system, wa_id, "stopped marketing messages")  # recorded before it is shown
        await system.graph.post(
            "/_sandbox/config", json={"customers": [{"wa_id": wa_id, "last_inbound_ago_s": 90000}]}
        )
        await operator_says(system, wa_id, "Neues Angebot!")
        [notice] = await system_lines(system, wa_id, "is a marketing template")
        assert "promo_offer" in notice["text"] and notice["direction"] != "operator"
        sends = await sent_to(system, wa_id)
        # The reply itself was tried (Meta refuses it later with 131047); no template ever went out.
        assert [s["payload"].get("type") for s in sends] == ["text"]
    finally:
        await bind_template(system, "")


async def test_customer_edits_and_revokes_change_the_message_in_the_chat(system: System) -> None:
    wa_id = new_customer()
    first = await customer_says(system, wa_id, type="text", text="Termin um 9")
    second = await customer_says(system, wa_id, type="text", text="Falsche Nachricht")
    await wait_for_messages(system, wa_id, 2)
    await business_app(system, wa_id, "edit", original_message_id=first["wamid"], text="Termin um 10")
    await business_app(system, wa_id, "revoke", original_message_id=second["wamid"])

    async def changed() -> bool:
        by_id = {m["external_ids"][0]: m for m in await chat_messages(system, wa_id) if m["external_ids"]}
        edited, revoked = by_id[first["wamid"]], by_id[second["wamid"]]
        return bool(edited["edited"] and edited["text"].startswith("Termin um 10") and revoked["deleted"])

    await eventually(changed, 20, "the edit and the revoke shown on the original messages")


async def test_contact_sync_renames_the_chat(system: System) -> None:
    wa_id = await customer(system)
    await business_app(system, wa_id, "contact-sync", full_name="Anna Schmidt")

    async def renamed() -> bool:
        chat = await chat_of(system, wa_id)
        return chat is not None and chat["name"] == "Anna Schmidt"

    await eventually(renamed, 20, "the chat renamed from the business app's contact sync")


async def test_the_history_import_fills_the_chat_in_order_beside_live_traffic(system: System) -> None:
    wa_id = await customer(system, "Guten Tag")
    old = [f"Alte Nachricht {i}" for i in range(6)]  # even: the customer's, odd: the business's
    history = system.graph.post(f"/_sandbox/customers/{wa_id}/history", json={"texts": old, "chunk_size": 2})
    answer, _ = await asyncio.gather(history, customer_says(system, wa_id, type="text", text="Live, jetzt"))
    assert answer.status_code == 200 and len(answer.json()["chunks"]) == 3, answer.text
    assert {c["gateway_status"] for c in answer.json()["chunks"]} == {200}
    live = await wait_for_messages(system, wa_id, 2)
    assert [m["text"] for m in live] == ["Guten Tag", "Live, jetzt"]  # the live message as the customer's

    async def imported() -> bool:
        return len([m for m in await chat_messages(system, wa_id) if "Alte Nachricht" in m["text"]]) == 6

    await eventually(imported, 30, "the six history lines in the chat")
    lines = [m for m in await chat_messages(system, wa_id) if "Alte Nachricht" in m["text"]]
    assert {m["direction"] for m in lines} == {"system"}  # im.message.add SYSTEM=Y
    assert [m["text"].rsplit(": ", 1)[1] for m in lines] == old  # in order
    assert all(m["text"].startswith("🕘 ") for m in lines)
    assert ["— business:" in m["text"] for m in lines] == [False, True] * 3
    assert await sent_to(system, wa_id) == []  # nothing of it went to WhatsApp
