"""An effect noted during a failed attempt reaches the next attempt and the dead letter through Kafka, so
the process or replica that handles the retry records it instead of doing it again."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaConsumer
from hypothesis import given
from hypothesis import strategies as st
from zaptrix.kafka import (
    EventConsumer,
    EventProducer,
    Flow,
    PermanentError,
    Received,
    TransientError,
    new_envelope,
    per_event,
)
from zaptrix.kafka.effects import H_EFFECTS, MAX_EFFECTS, effects_header, read_effects
from zaptrix.kafka.topics import FlowTopics
from zaptrix.replay import replay_flow
from zaptrix.settings import KafkaSettings
from zaptrix.v1 import events_pb2


@pytest.fixture
async def kafka(
    flow_kafka: Callable[[int], Awaitable[tuple[KafkaSettings, FlowTopics, EventProducer]]],
) -> tuple[KafkaSettings, FlowTopics, EventProducer]:
    return await flow_kafka(1)


def _event(n: int) -> events_pb2.Envelope:
    return new_envelope(
        f"b24:{n}",
        f"conv-{n}",
        events_pb2.PLATFORM_BITRIX24,
        customer_message=events_pb2.CustomerMessage(wamid=f"wamid.{n}", text=f"message {n}"),
    )


async def test_noted_effects_reach_the_retry_and_the_dead_letter(
    kafka: tuple[KafkaSettings, FlowTopics, EventProducer],
) -> None:
    settings, topics, producer = kafka
    await producer.publish(topics.main, [_event(1)])
    seen: list[dict[str, str]] = []

    async def handler(rec: Received) -> None:
        seen.append(dict(rec.effects))
        rec.happened(f"part-{rec.attempt}", f"wamid.sent-{rec.attempt}")
        raise TransientError("mapper unavailable")  # the send happened, its record did not

    consumer = EventConsumer(
        settings,
        topics,
        f"g-{uuid.uuid4().hex[:6]}",
        per_event(handler),
        producer,
        client_id="t",
        retry_base_s=0.1,
        max_attempts=3,
    )
    stopped = asyncio.Event()
    task = asyncio.create_task(consumer.run(stopped))
    reader = AIOKafkaConsumer(
        topics.dlq, bootstrap_servers=settings.bootstrap_servers, auto_offset_reset="earliest"
    )
    await reader.start()
    dead: list[list[tuple[str, bytes]]] = []
    try:
        async with asyncio.timeout(40):
            while not dead:
                for records in (await reader.getmany(timeout_ms=500)).values():
                    dead += [list(r.headers) for r in records]
    finally:
        await reader.stop()
        stopped.set()
        await task
    assert seen == [
        {},
        {"part-1": "wamid.sent-1"},
        {"part-1": "wamid.sent-1", "part-2": "wamid.sent-2"},
    ]
    assert read_effects(dead[0]) == {f"part-{n}": f"wamid.sent-{n}" for n in (1, 2, 3)}
    assert sum(1 for k, _ in dead[0] if k == H_EFFECTS) == 1


@pytest.mark.parametrize(
    "value",
    [b"not json", b"[1,2]", b'{"a": 1}', b'{"a": {"b": "c"}}', b"{" * 10_000],
)
def test_a_header_that_is_not_ours_is_ignored(value: bytes) -> None:
    assert read_effects([(H_EFFECTS, value)]) == {}


def test_too_many_effects_are_refused_whole() -> None:
    many = {f"k{i}": "v" for i in range(MAX_EFFECTS + 1)}
    header = [(H_EFFECTS, str(many).replace("'", '"').encode())]
    assert read_effects(header) == {}


@given(st.dictionaries(st.text(max_size=300), st.text(max_size=1500), max_size=MAX_EFFECTS))
def test_effects_round_trip_bounded(effects: dict[str, str]) -> None:
    back = read_effects(effects_header(effects))
    assert len(back) <= len(effects)
    for key, value in back.items():
        assert len(key) <= 200 and len(value) <= 1000
    if all(len(k) <= 200 and len(v) <= 1000 for k, v in effects.items()):
        assert back == effects


async def test_a_replayed_dead_letter_keeps_its_effects(
    kafka: tuple[KafkaSettings, FlowTopics, EventProducer],
) -> None:
    """zaptrix-replay moves a dead letter back with what already happened, so its next handling records the
    effect instead of doing it again (a message sent, then dead-lettered because it could not be recorded)."""
    settings, topics, producer = kafka
    await producer.publish(topics.main, [_event(2)])
    seen: list[dict[str, str]] = []

    async def handler(rec: Received) -> None:
        seen.append(dict(rec.effects))
        if not rec.effects:
            rec.happened("bitrix24.sent", '{"chat":"1807"}')
            raise PermanentError("mapper RecordDelivery: NOT_FOUND")

    group = f"g-{uuid.uuid4().hex[:6]}"

    async def consume_until(done: Callable[[], bool]) -> None:
        consumer = EventConsumer(settings, topics, group, per_event(handler), producer, client_id="t")
        stopped = asyncio.Event()
        task = asyncio.create_task(consumer.run(stopped))
        try:
            async with asyncio.timeout(40):
                while not done():
                    await asyncio.sleep(0.1)
        finally:
            stopped.set()
            await task

    await consume_until(lambda: len(seen) == 1)
    async with asyncio.timeout(20):
        while not await replay_flow(settings, Flow.WA_TO_B24):
            pass
    await consume_until(lambda: len(seen) >= 2)
    assert seen == [{}, {"bitrix24.sent": '{"chat":"1807"}'}]
