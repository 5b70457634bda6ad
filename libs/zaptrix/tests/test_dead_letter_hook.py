"""The consumer's on_dead_letter hook: called once per dead letter with the envelope the handler had (the
record is decoded once) and the bounded reason; its failure never blocks the partition. The reason header is bounded and carries no credentials (L3)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaConsumer
from zaptrix.kafka import (
    EventConsumer,
    EventProducer,
    PermanentError,
    Received,
    new_envelope,
    per_event,
)
from zaptrix.kafka.envelope import H_DLQ_REASON, header
from zaptrix.kafka.topics import FlowTopics
from zaptrix.settings import KafkaSettings
from zaptrix.v1 import events_pb2


@pytest.fixture
async def kafka(
    flow_kafka: Callable[[int], Awaitable[tuple[KafkaSettings, FlowTopics, EventProducer]]],
) -> tuple[KafkaSettings, FlowTopics, EventProducer]:
    return await flow_kafka(1)


def _event(n: int) -> events_pb2.Envelope:
    return new_envelope(
        f"wa:wamid.{n}",
        "100:4915",
        events_pb2.PLATFORM_WHATSAPP,
        customer_message=events_pb2.CustomerMessage(wamid=f"wamid.{n}", text=f"message {n}"),
    )


async def test_hook_gets_each_dead_letter_and_its_failure_blocks_nothing(
    kafka: tuple[KafkaSettings, FlowTopics, EventProducer],
) -> None:
    settings, topics, producer = kafka
    await producer.publish(topics.main, [_event(1), _event(2), _event(3)])
    told: list[tuple[str, str]] = []
    handled: list[str] = []
    opened: dict[str, events_pb2.Envelope] = {}
    hooked: dict[str, events_pb2.Envelope] = {}

    async def handler(rec: Received) -> None:
        handled.append(rec.envelope.event_id)
        opened[rec.envelope.event_id] = rec.envelope
        if rec.envelope.event_id != "wa:wamid.3":
            raise PermanentError(
                "unexpected HTTPError: GET https://h/x?access_token=SECRET\nnext" + "z" * 5000
            )

    async def hook(env: events_pb2.Envelope, reason: str) -> None:
        told.append((env.event_id, reason))
        hooked[env.event_id] = env
        if env.event_id == "wa:wamid.1":
            raise RuntimeError("the notice could not be sent")

    consumer = EventConsumer(
        settings,
        topics,
        f"g-{uuid.uuid4().hex[:6]}",
        per_event(handler),
        producer,
        client_id="t",
        on_dead_letter=hook,
    )
    stopped = asyncio.Event()
    task = asyncio.create_task(consumer.run(stopped))
    try:
        async with asyncio.timeout(30):
            while "wa:wamid.3" not in handled or len(told) < 2:
                await asyncio.sleep(0.05)
    finally:
        stopped.set()
        await task
    assert [event_id for event_id, _ in told] == ["wa:wamid.1", "wa:wamid.2"]
    assert all(hooked[event_id] is opened[event_id] for event_id in hooked)  # not decoded a second time
    for _, reason in told:
        assert "SECRET" not in reason and "\n" not in reason and len(reason) < 600

    reader = AIOKafkaConsumer(
        topics.dlq, bootstrap_servers=settings.bootstrap_servers, auto_offset_reset="earliest"
    )
    await reader.start()
    headers: list[list[tuple[str, bytes]]] = []
    try:
        async with asyncio.timeout(20):
            while len(headers) < 2:
                for records in (await reader.getmany(timeout_ms=500)).values():
                    headers += [list(r.headers) for r in records]
    finally:
        await reader.stop()
    for h in headers:
        reason = header(h, H_DLQ_REASON) or ""
        assert reason.startswith("unexpected HTTPError") and "SECRET" not in reason and len(reason) < 600
