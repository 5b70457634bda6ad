"""One bad message costs one bad message, and the operator sees it: a dead-lettered operator message or
customer message leaves a notice in the Bitrix24 chat saying what was not delivered and why, in plain words."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from zaptrix.kafka import Flow, topics_for
from zaptrix.kafka.envelope import H_DLQ_REASON, H_EVENT_ID, header
from zaptrix_testing.seeding import SANDBOX_MEMBER_ID
from zaptrix_testing.waiting import eventually

from tests.e2e.flows import chat_messages, customer_says, operator_says, wait_for_messages
from tests.system import System

_numbers = itertools.count(491740000000)
NOTICE = "⚠️ Zaptrix:"


class DeadLetters:
    """Records of one dead-letter topic, read from its end when the test starts."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self.consumer = consumer
        self.seen: list[tuple[str, str]] = []  # (event id, reason)

    async def reason_of(self, event_id: str, timeout_s: float = 30) -> str:
        async def found() -> bool:
            batch = await self.consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for rec in records:
                    headers = list(rec.headers or [])
                    self.seen.append((header(headers, H_EVENT_ID) or "", header(headers, H_DLQ_REASON) or ""))
            return any(eid == event_id for eid, _ in self.seen)

        await eventually(found, timeout_s, f"a dead letter for {event_id}")
        return next(reason for eid, reason in self.seen if eid == event_id)


async def _dead_letters(system: System, flow: Flow) -> AsyncIterator[DeadLetters]:
    consumer = AIOKafkaConsumer(
        topics_for(flow, system.kafka.topic_prefix).dlq,
        bootstrap_servers=system.kafka.bootstrap_servers,
        auto_offset_reset="latest",
        enable_auto_commit=False,
    )
    await consumer.start()
    await consumer.seek_to_end()
    try:
        yield DeadLetters(consumer)
    finally:
        await consumer.stop()


@pytest.fixture
async def operator_dead_letters(system: System) -> AsyncIterator[DeadLetters]:
    async for reader in _dead_letters(system, Flow.B24_TO_WA):
        yield reader


@pytest.fixture
async def customer_dead_letters(system: System) -> AsyncIterator[DeadLetters]:
    async for reader in _dead_letters(system, Flow.WA_TO_B24):
        yield reader


async def notices(system: System, wa_id: str) -> list[str]:
    return [str(m["text"]) for m in await chat_messages(system, wa_id) if NOTICE in str(m.get("text", ""))]


async def wait_notice(system: System, wa_id: str, timeout_s: float = 30) -> str:
    found: list[str] = []

    async def seen() -> bool:
        nonlocal found
        found = await notices(system, wa_id)
        return bool(found)

    await eventually(seen, timeout_s, f"a notice in the chat of {wa_id}")
    return found[0]


async def _configure(system: System, client: Any, body: dict[str, Any]) -> None:
    (await client.post("/_sandbox/config", json=body)).raise_for_status()


async def test_operator_message_refused_by_graph_is_dead_lettered_and_the_operator_told(
    system: System, operator_dead_letters: DeadLetters
) -> None:
    wa_id = str(next(_numbers))
    await customer_says(system, wa_id, type="text", text="Hallo")
    await wait_for_messages(system, wa_id, 1)
    await _configure(system, system.graph, {"refuse_numbers": {wa_id: 131009}})
    try:
        text = "Ihre Bestellung 4711 ist unterwegs. " * 5  # longer than the 80-character preview
        sent = await operator_says(system, wa_id, text)
        reason = await operator_dead_letters.reason_of(f"b24:{SANDBOX_MEMBER_ID}:{sent['im']['message_id']}")
        assert "131009" in reason
        notice = await wait_notice(system, wa_id)
    finally:
        await _configure(system, system.graph, {"refuse_numbers": {}})
    assert notice.startswith(f"{NOTICE} your message 'Ihre Bestellung 4711 ist unterwegs.")
    assert "…' was not delivered: WhatsApp refused it (error 131009)." in notice
    assert "sandbox fault injection" not in notice  # Graph's own text is never shown
    await asyncio.sleep(1.0)
    assert len(await notices(system, wa_id)) == 1  # one notice per message


async def test_customer_message_refused_by_bitrix24_is_dead_lettered_and_a_notice_attempted(
    system: System, customer_dead_letters: DeadLetters
) -> None:
    wa_id = str(next(_numbers))
    await customer_says(system, wa_id, type="text", text="Guten Morgen")
    await wait_for_messages(system, wa_id, 1)
    marker = f"refuse-me-{wa_id}"
    await _configure(system, system.bitrix, {"refuse_texts": [marker]})
    try:
        said = await customer_says(system, wa_id, type="text", text=f"Bitte {marker}")
        reason = await customer_dead_letters.reason_of(f"wa:{said['wamid']}")
        assert "ERROR_ARGUMENT" in reason
        notice = await wait_notice(system, wa_id)
    finally:
        await _configure(system, system.bitrix, {"refuse_texts": []})
    assert notice.startswith(f"{NOTICE} a message from the customer could not be shown in this chat:")
    assert "Bitrix24 refused it (ERROR_ARGUMENT)" in notice
    assert marker not in notice and "sandbox fault injection" not in notice
