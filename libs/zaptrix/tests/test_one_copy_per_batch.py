"""A poll batch hands each event id to the handler once. Copies of one event land in one partition when a
producer re-sends after a timeout (Kafka was slow, the webhook was answered 503 and Meta sent it again):
a batch handler that checks its dedupe records for the whole batch before recording any would deliver
every copy (the fault suite's kafka-kill scenario put 61 customer messages into Open Lines twice)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

from zaptrix.kafka import EventConsumer, EventProducer, Outcome, Received, new_envelope
from zaptrix.kafka.topics import FlowTopics
from zaptrix.settings import KafkaSettings
from zaptrix.v1 import events_pb2


async def test_copies_of_an_event_in_one_batch_reach_the_handler_once(
    flow_kafka: Callable[[int], Awaitable[tuple[KafkaSettings, FlowTopics, EventProducer]]],
) -> None:
    settings, topics, producer = await flow_kafka(1)
    env = new_envelope(
        "wa:wamid.copy",
        "100:4915",
        events_pb2.PLATFORM_WHATSAPP,
        customer_message=events_pb2.CustomerMessage(wamid="wamid.copy", text="once"),
    )
    other = new_envelope(
        "wa:wamid.other",
        "100:4916",
        events_pb2.PLATFORM_WHATSAPP,
        customer_message=events_pb2.CustomerMessage(wamid="wamid.other", text="other"),
    )
    await producer.publish(topics.main, [env, env, other, env])
    seen: list[str] = []

    async def batch_handler(batch: list[Received]) -> list[Outcome]:
        seen.extend(rec.envelope.event_id for rec in batch)
        return [Outcome.ok() for _ in batch]

    consumer = EventConsumer(
        settings, topics, f"g-{uuid.uuid4().hex[:6]}", batch_handler, producer, client_id="t"
    )
    stopped = asyncio.Event()
    task = asyncio.create_task(consumer.run(stopped))
    try:
        async with asyncio.timeout(30):
            while "wa:wamid.other" not in seen:
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # anything still to come would be a copy
    finally:
        stopped.set()
        await task
    assert sorted(seen) == ["wa:wamid.copy", "wa:wamid.other"]
