"""Bitrix24 → WhatsApp across the real system: operator replies reach the customer, receipts come back."""

from __future__ import annotations

import asyncio
import base64

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from zaptrix.kafka import Flow, topics_for
from zaptrix.kafka.envelope import H_EVENT_ID, header
from zaptrix_testing.seeding import SANDBOX_MEMBER_ID
from zaptrix_testing.waiting import eventually

from tests.e2e.flows import (
    bind_template,
    chat_messages,
    customer,
    external_chat_id,
    operator_says,
    sent_to,
    wait_sent,
)
from tests.system import System

PNG_1PX = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()


@pytest.mark.parametrize(
    ("bbcode", "whatsapp"),
    [
        ("[b]fett[/b] und [i]kursiv[/i]", "*fett* und _kursiv_"),
        ("[s]alt[/s][br]neu", "~alt~\nneu"),
        ("Siehe [url=https://example.com/a]hier[/url]", "hier (https://example.com/a)"),
        ("[code]x = 1[/code]", "```x = 1```"),
    ],
)
async def test_operator_text_reaches_the_customer_in_whatsapp_formatting(
    system: System, bbcode: str, whatsapp: str
) -> None:
    wa_id = await customer(system)
    await operator_says(system, wa_id, bbcode, operator="Klaus Weber")
    [sent] = await wait_sent(system, wa_id)
    body = sent["payload"]["text"]["body"]
    assert body.startswith("*Klaus Weber:*\n"), body
    assert whatsapp in body, body


@pytest.mark.parametrize(
    ("name", "content", "wa_type"),
    [
        ("foto.png", PNG_1PX, "image"),
        ("rechnung.pdf", base64.b64encode(b"%PDF-1.4\n%%EOF\n").decode(), "document"),
    ],
)
async def test_operator_files_go_out_as_the_matching_media_type(
    system: System, name: str, content: str, wa_type: str
) -> None:
    wa_id = await customer(system)
    await operator_says(system, wa_id, "Anbei", files=[{"name": name, "content_b64": content}])
    sent = await wait_sent(system, wa_id)
    assert wa_type in {s["payload"]["type"] for s in sent}, sent


async def test_delivery_and_read_receipts_reach_the_operator(system: System) -> None:
    wa_id = await customer(system)
    await operator_says(system, wa_id, "Ist angekommen?")
    await wait_sent(system, wa_id)

    async def delivered() -> bool:
        ops = [m for m in await chat_messages(system, wa_id) if m["direction"] == "operator"]
        return bool(ops) and ops[-1]["delivered"]

    await eventually(delivered, what="delivery mark on the operator's message in Bitrix24")


async def test_bad_application_token_is_refused_and_nothing_is_sent(system: System) -> None:
    wa_id = await customer(system)
    resp = await system.bitrix.post(
        f"/_sandbox/portals/{SANDBOX_MEMBER_ID}/operator-messages",
        json={
            "chat_id": await external_chat_id(system, wa_id),
            "text": "gefälscht",
            "wrong_application_token": True,
        },
    )
    assert resp.json()["gateway_status"] == 401
    await operator_says(system, wa_id, "echt")
    sent = await wait_sent(system, wa_id)
    assert [s["payload"]["text"]["body"].split("\n")[-1] for s in sent] == ["echt"]


async def test_closed_window_tells_the_operator(system: System) -> None:
    wa_id = await customer(system)
    # 25 hours without a customer message: plain replies are refused by WhatsApp (131047).
    await system.graph.post(
        "/_sandbox/config", json={"customers": [{"wa_id": wa_id, "last_inbound_ago_s": 90000}]}
    )
    await operator_says(system, wa_id, "Noch Interesse?")

    async def notice() -> bool:
        messages = await chat_messages(system, wa_id)
        return any("24 hours" in m["text"] and m["direction"] != "operator" for m in messages[1:])

    await eventually(notice, 45, "a visible 'not delivered: window closed' notice in the operator's chat")


@pytest.mark.parametrize("mode", ["async", "sync"])
async def test_closed_window_sends_the_reengagement_template_where_configured(
    system: System, mode: str
) -> None:
    # Meta reports 131047 either as a failed status after accepting the send (async) or at once (sync).
    await system.graph.post("/_sandbox/config", json={"window_error_mode": mode})
    await bind_template(system, "hello_world")
    try:
        await asyncio.sleep(1.5)  # the dispatcher's channel cache (0.5 s in these tests)
        wa_id = await customer(system)
        await system.graph.post(
            "/_sandbox/config", json={"customers": [{"wa_id": wa_id, "last_inbound_ago_s": 90000}]}
        )
        # The conversation's own record says the window is open; only Meta knows it is closed.
        await operator_says(system, wa_id, "Noch Interesse?")

        async def template_sent() -> bool:
            return any(
                s["payload"].get("type") == "template" and s["http_status"] == 200
                for s in await sent_to(system, wa_id)
            )

        await eventually(
            template_sent, 45, f"the re-engagement template sent to the customer ({mode} 131047)"
        )
    finally:
        await bind_template(system, "")
        await system.graph.post("/_sandbox/config", json={"window_error_mode": "async"})


async def test_a_redelivered_event_sends_nothing_twice(system: System) -> None:
    wa_id = await customer(system)
    reply = await operator_says(system, wa_id, "genau einmal")
    await wait_sent(system, wa_id)
    event_id = f"b24:{SANDBOX_MEMBER_ID}:{reply['im']['message_id']}"
    topic = topics_for(Flow.B24_TO_WA, system.kafka.topic_prefix).main
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=system.kafka.bootstrap_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    record = None
    try:
        async with asyncio.timeout(15):
            while record is None:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    record = next((r for r in records if header(r.headers, H_EVENT_ID) == event_id), record)
    finally:
        await consumer.stop()
    producer = AIOKafkaProducer(bootstrap_servers=system.kafka.bootstrap_servers)
    await producer.start()
    try:  # Kafka redelivers (e.g. after a rebalance before the commit): the same record, twice more
        for _ in range(2):
            await producer.send_and_wait(topic, record.value, key=record.key, headers=list(record.headers))
    finally:
        await producer.stop()
    await operator_says(system, wa_id, "danach")
    sent = await wait_sent(system, wa_id, 2)
    await asyncio.sleep(1.0)
    bodies = [
        s["payload"]["text"]["body"].split("\n")[-1]
        for s in await sent_to(system, wa_id)
        if s["http_status"] == 200
    ]
    assert bodies == ["genau einmal", "danach"], sent


async def test_a_burst_of_replies_stays_within_the_numbers_throughput(system: System) -> None:
    customers = await asyncio.gather(*(customer(system, f"Frage {n}") for n in range(40)))
    await asyncio.gather(*(operator_says(system, wa_id, f"Antwort an {wa_id}") for wa_id in customers))
    for wa_id in customers:
        await wait_sent(system, wa_id, 1, timeout_s=30)
    sends = [s for wa_id in customers for s in await sent_to(system, wa_id)]
    assert not [s for s in sends if s["error_code"] in (130429, 131056)], (
        "the dispatcher paces below Meta's limits"
    )
    assert len([s for s in sends if s["http_status"] == 200]) == 40
