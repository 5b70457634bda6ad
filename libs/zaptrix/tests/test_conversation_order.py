"""A conversation's events take effect in order even when one of them waits in the retry topic, also across
a restart of the consumer; and one tenant's long retry does not hold other tenants' due retries."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaProducer
from zaptrix.kafka import (
    EventConsumer,
    EventProducer,
    Outcome,
    Received,
    TransientError,
    encode,
    new_envelope,
    per_event,
)
from zaptrix.kafka.envelope import H_ATTEMPT, H_NOT_BEFORE, now_ms
from zaptrix.kafka.topics import FlowTopics
from zaptrix.settings import KafkaSettings
from zaptrix.v1 import events_pb2

Kafka = tuple[KafkaSettings, FlowTopics, EventProducer]


@pytest.fixture
async def kafka(flow_kafka: Callable[[int], Awaitable[Kafka]]) -> Kafka:
    return await flow_kafka(1)


def _event(conversation: str, n: int) -> events_pb2.Envelope:
    return new_envelope(
        f"{conversation}:{n}",
        conversation,
        events_pb2.PLATFORM_BITRIX24,
        customer_message=events_pb2.CustomerMessage(wamid=f"wamid.{conversation}.{n}", text=str(n)),
    )


def _consumer(kafka: Kafka, group: str, handler: Callable[[Received], Awaitable[None]]) -> EventConsumer:
    settings, topics, producer = kafka
    return EventConsumer(
        settings, topics, group, per_event(handler), producer, client_id="t", retry_base_s=2.0
    )


async def _run_until(consumer: EventConsumer, done: Callable[[], bool], timeout_s: float = 40.0) -> None:
    stopped = asyncio.Event()
    task = asyncio.create_task(consumer.run(stopped))
    try:
        async with asyncio.timeout(timeout_s):
            while not done():
                await asyncio.sleep(0.05)
    finally:
        stopped.set()
        await task


async def test_later_events_wait_behind_a_retry(kafka: Kafka) -> None:
    _, topics, producer = kafka
    await producer.publish(topics.main, [_event("k", 1), _event("k", 2), _event("other", 1), _event("k", 3)])
    done: list[str] = []
    failed_once: set[str] = set()

    async def handler(rec: Received) -> None:
        event_id = rec.envelope.event_id
        if event_id == "k:1" and event_id not in failed_once:
            failed_once.add(event_id)
            raise TransientError("Bitrix24 answered 503")
        done.append(event_id)

    await _run_until(_consumer(kafka, f"g-{uuid.uuid4().hex[:6]}", handler), lambda: len(done) == 4)
    assert [e for e in done if e.startswith("k:")] == ["k:1", "k:2", "k:3"]
    assert done[0] == "other:1"  # another conversation did not wait


async def test_a_restarted_consumer_still_holds_the_conversation(kafka: Kafka) -> None:
    _, topics, producer = kafka
    group = f"g-{uuid.uuid4().hex[:6]}"
    await producer.publish(topics.main, [_event("k", 1)])
    attempts: list[str] = []

    async def failing(rec: Received) -> None:
        attempts.append(rec.envelope.event_id)
        raise TransientError("mapper unavailable")

    # The first owner moves k:1 to the retry topic (due in 1-2 s) and goes away.
    await _run_until(_consumer(kafka, group, failing), lambda: bool(attempts))
    await asyncio.sleep(0.5)
    await producer.publish(topics.main, [_event("k", 2)])
    done: list[str] = []

    async def handler(rec: Received) -> None:
        done.append(rec.envelope.event_id)

    await _run_until(_consumer(kafka, group, handler), lambda: len(done) == 2)
    assert done == ["k:1", "k:2"]


async def test_a_long_retry_does_not_hold_other_tenants_due_retries(kafka: Kafka) -> None:
    settings, topics, _ = kafka
    raw = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    await raw.start()
    for conversation, wait_ms in (("slow-tenant", 600_000), ("tenant-b", 0), ("tenant-c", 0)):
        key, value, headers = encode(_event(conversation, 1))
        extra = [(H_ATTEMPT, b"5"), (H_NOT_BEFORE, str(now_ms() + wait_ms).encode())]
        await raw.send_and_wait(topics.retry, value, key=key, headers=[*headers, *extra], partition=0)
    await raw.stop()
    done: list[str] = []

    async def handler(rec: Received) -> None:
        done.append(rec.envelope.event_id)

    await _run_until(_consumer(kafka, f"g-{uuid.uuid4().hex[:6]}", handler), lambda: len(done) == 2)
    assert sorted(done) == ["tenant-b:1", "tenant-c:1"]


async def test_an_unordered_retry_does_not_hold_its_conversation(kafka: Kafka) -> None:
    """A status waiting for its message's link goes to the retry topic without holding the customer's next
    messages (statuses do not need the conversation's order)."""
    _, topics, producer = kafka
    await producer.publish(topics.main, [_event("k", 1), _event("k", 2)])
    done: list[str] = []
    failed_once: set[str] = set()

    async def batch_handler(batch: list[Received]) -> list[Outcome]:
        out = []
        for rec in batch:
            event_id = rec.envelope.event_id
            if event_id == "k:1" and event_id not in failed_once:
                failed_once.add(event_id)
                out.append(Outcome.retry("no message link yet", ordered=False))
            else:
                done.append(event_id)
                out.append(Outcome.ok())
        return out

    settings, _, _ = kafka
    consumer = EventConsumer(
        settings,
        topics,
        f"g-{uuid.uuid4().hex[:6]}",
        batch_handler,
        producer,
        client_id="t",
        retry_base_s=2.0,
    )
    await _run_until(consumer, lambda: len(done) == 2)
    assert done == ["k:2", "k:1"]
