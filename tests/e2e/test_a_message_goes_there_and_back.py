"""The shortest proof that the system works: one customer message reaches the operator and back."""

from __future__ import annotations

from zaptrix_testing.waiting import eventually

from tests.e2e.flows import chat_messages, customer_says, operator_says, sent_to
from tests.system import System


async def test_customer_message_reaches_the_operator_and_the_reply_reaches_the_customer(
    system: System,
) -> None:
    sent = await customer_says(system, "491700000001", text="Hallo, ist jemand da?", name="Anna Schmidt")

    async def arrived() -> bool:
        return any(m["text"] == "Hallo, ist jemand da?" for m in await chat_messages(system, "491700000001"))

    await eventually(arrived, what=f"customer message {sent['wamid']} in the Bitrix24 stand-in")

    await operator_says(system, "491700000001", "[b]Guten Tag![/b] Wie kann ich helfen?")

    async def replied() -> bool:
        return any(
            s["payload"].get("text", {}).get("body", "").endswith("*Guten Tag!* Wie kann ich helfen?")
            for s in await sent_to(system, "491700000001")
        )

    await eventually(replied, what="operator reply at the Graph API stand-in")
