"""Templates across the real system (PostgreSQL, Kafka, every process, both stand-ins): an operator's
/template command is checked against the catalogue the meta dispatcher synced from the Graph stand-in and
sent as a template message; a template paused at Meta (the signed webhook) leaves the catalogue at once and
the next command is refused with a notice in the chat."""

from __future__ import annotations

from typing import Any

from zaptrix.v1 import mapper_pb2, mapper_pb2_grpc
from zaptrix_testing.seeding import SANDBOX_MEMBER_ID, SANDBOX_PHONE_NUMBER_ID
from zaptrix_testing.waiting import eventually

from tests.e2e.flows import chat_messages, customer, operator_says, sent_to
from tests.system import System


async def catalogue(system: System) -> dict[tuple[str, str], str]:
    async with system.local.grpc_channel("mapper") as channel:
        answer = await mapper_pb2_grpc.MapperStub(channel).ListTemplates(
            mapper_pb2.ListTemplatesRequest(
                member_id=SANDBOX_MEMBER_ID, phone_number_id=SANDBOX_PHONE_NUMBER_ID
            )
        )
    return {(t.name, t.language): t.status for t in answer.templates}


async def notice_with(system: System, wa_id: str, needle: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    async def shown() -> bool:
        nonlocal found
        found = [
            m
            for m in await chat_messages(system, wa_id)
            if needle in m["text"] and m["direction"] != "operator"
        ]
        return bool(found)

    await eventually(shown, 30, f"a notice with {needle!r} in the chat of {wa_id}")
    return found[0]


async def test_a_template_command_is_sent_and_a_paused_template_is_refused(system: System) -> None:
    wa_id = await customer(system)  # also lets meta-ingress verify the WABA's webhooks (its app secret)
    await operator_says(system, wa_id, "/template order_update@pt_BR 12345 | sexta | header=A-77")

    async def template_sent() -> list[dict[str, Any]]:
        return [s for s in await sent_to(system, wa_id) if s["payload"].get("type") == "template"]

    async def sent_once() -> bool:
        return len(await template_sent()) == 1

    try:
        await eventually(sent_once, 45, "the template sent to the customer")
    except AssertionError:
        raise AssertionError(
            f"chat: {await chat_messages(system, wa_id)}; sent: {await sent_to(system, wa_id)}"
        ) from None
    (send,) = await template_sent()
    assert send["http_status"] == 200
    assert send["payload"]["template"]["name"] == "order_update"
    assert send["payload"]["template"]["language"] == {"code": "pt_BR"}
    assert send["payload"]["template"]["components"][1]["parameters"][1] == {"type": "text", "text": "sexta"}
    assert (await catalogue(system))[("order_update", "en_US")] == "APPROVED"  # synced on first use

    paused = await system.graph.post("/_sandbox/templates/order_update/status", json={"event": "PAUSED"})
    assert all(h["gateway_status"] == 200 for h in paused.json()["webhooks"]), paused.text
    try:

        async def paused_in_catalogue() -> bool:
            return (await catalogue(system)).get(("order_update", "en_US")) == "PAUSED"

        await eventually(paused_in_catalogue, 30, "the paused template in the mapper's catalogue")
        await operator_says(system, wa_id, "/template order_update 1 | 2 | header=x")
        notice = await notice_with(system, wa_id, "Template not sent")
        assert "paused" in notice["text"]
        await operator_says(system, wa_id, "/template no_such_template")
        await notice_with(system, wa_id, "There is no template “no_such_template”")
        assert len(await template_sent()) == 1  # nothing else went out
    finally:
        await system.graph.post("/_sandbox/templates/order_update/status", json={"event": "REINSTATED"})
