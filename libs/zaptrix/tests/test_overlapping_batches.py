"""Poll batches overlap: the next batch starts while a record of the previous one is still in flight, yet a
conversation's records keep their order, nothing is committed past an unfinished record, a rebalance waits
for the work in flight (nothing handled twice by two owners), and a failure in an overlapped batch goes to
the retry topic without losing or repeating the others. All against the real Kafka."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import TopicPartition
from zaptrix.kafka import EventConsumer, EventProducer, Received, TransientError, new_envelope, per_event
from zaptrix.kafka.topics import FlowTopics
from zaptrix.settings import KafkaSettings
from zaptrix.v1 import events_pb2
from zaptrix_testing.waiting import eventually

Kafka = tuple[KafkaSettings, FlowTopics, EventProducer]

# Batches of 4 records, 3 in flight: batch 1 = slow:1 a:1 b:1 c:1, batch 2 = slow:2 a:2 d:1 e:1,
# batch 3 = f:1 g:1 h:1 i:1, then a:3 j:1.
EVENTS = [
    ("slow", 1), ("a", 1), ("b", 1), ("c", 1),
    ("slow", 2), ("a", 2), ("d", 1), ("e", 1),
    ("f", 1), ("g", 1), ("h", 1), ("i", 1),
    ("a", 3), ("j", 1),
]  # fmt: skip
ALL = [f"{c}:{n}" for c, n in EVENTS]


@pytest.fixture
async def kafka(flow_kafka: Callable[[int], Awaitable[Kafka]]) -> Kafka:
    settings, topics, producer = await flow_kafka(1)
    small = settings.model_copy(update={"consumer_max_records": 4, "consumer_max_in_flight_batches": 3})
    await producer.publish(topics.main, [_event(c, n) for c, n in EVENTS])
    return small, topics, producer


def _event(conversation: str, n: int) -> events_pb2.Envelope:
    return new_envelope(
        f"{conversation}:{n}",
        conversation,
        events_pb2.PLATFORM_BITRIX24,
        customer_message=events_pb2.CustomerMessage(wamid=f"wamid.{conversation}.{n}", text=str(n)),
    )


class Gated:
    """A handler that holds slow:1 until ``gate`` opens and notes starts and finishes."""

    def __init__(self, gate: asyncio.Event, fail_once: str = "") -> None:
        self.gate = gate
        self.fail_once = fail_once
        self.started: list[str] = []
        self.done: list[str] = []

    async def __call__(self, rec: Received) -> None:
        event_id = rec.envelope.event_id
        self.started.append(event_id)
        if event_id == "slow:1":
            await self.gate.wait()
        if event_id == self.fail_once:
            self.fail_once = ""
            raise TransientError("Bitrix24 answered 503")
        self.done.append(event_id)


def _consumer(kafka: Kafka, group: str, handler: Gated) -> EventConsumer:
    settings, topics, producer = kafka
    return EventConsumer(
        settings, topics, group, per_event(handler), producer, client_id="t", retry_base_s=0.5
    )


async def _committed(consumer: EventConsumer, topic: str) -> int:
    assert consumer._consumer is not None
    return (await consumer._consumer.committed(TopicPartition(topic, 0))) or 0


def _in_order(done: list[str], conversation: str) -> bool:
    mine = [e for e in done if e.startswith(f"{conversation}:")]
    return mine == sorted(mine, key=lambda e: int(e.split(":")[1]))


async def test_later_batches_run_while_a_record_is_in_flight_in_order_and_uncommitted(kafka: Kafka) -> None:
    _, topics, _ = kafka
    gate = asyncio.Event()
    handler = Gated(gate)
    consumer = _consumer(kafka, f"g-{uuid.uuid4().hex[:6]}", handler)
    stopped = asyncio.Event()
    task = asyncio.create_task(consumer.run(stopped))
    try:
        # Batches 2 and 3 are handled while slow:1 (batch 1) is still in flight ...
        await eventually(lambda: {"d:1", "e:1", "f:1", "i:1"} <= set(handler.done), 20, "overlapped batches")
        # ... but the conversations in flight wait: slow:2 and a:2 have not started.
        await asyncio.sleep(0.5)  # several polls and commits in which they could wrongly start
        assert "slow:2" not in handler.started and "a:2" not in handler.started
        # Nothing is committed past slow:1 (offset 0), though batch 3 is finished.
        assert await _committed(consumer, topics.main) == 0
        gate.set()
        await eventually(lambda: sorted(handler.done) == sorted(ALL), 20, "everything handled")
        await eventually(
            lambda: _is(_committed(consumer, topics.main), len(EVENTS)), 10, "committed to the end"
        )
    finally:
        gate.set()
        stopped.set()
        await task
    assert Counter(handler.done) == Counter(ALL)  # once each
    assert all(_in_order(handler.done, c) for c in ("slow", "a"))
    assert handler.done.index("slow:1") < handler.done.index("slow:2")


async def _is(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def test_a_rebalance_waits_for_the_work_in_flight_and_nothing_is_handled_twice(kafka: Kafka) -> None:
    group = f"g-{uuid.uuid4().hex[:6]}"
    gate = asyncio.Event()
    first, second = Gated(gate), Gated(gate)
    one, two = _consumer(kafka, group, first), _consumer(kafka, group, second)
    stopped = asyncio.Event()
    tasks = [asyncio.create_task(one.run(stopped))]
    try:
        # Batches 1, 2 and 4 in flight (slow:1 holds 1; slow:2 and a:2, a:3 wait behind it).
        await eventually(lambda: {"d:1", "f:1", "j:1"} <= set(first.done), 20, "overlapped batches")
        tasks.append(asyncio.create_task(two.run(stopped)))  # a second member joins: a rebalance
        # The rebalance reaches the first member while slow:1 is in flight: its revocation holds the
        # admission lock while its batches drain (its poll loop is waiting for capacity, not starting a
        # batch); a member that did not wait would let a record still in flight here start again.
        await eventually(
            lambda: (
                (one._admit.locked() and len(one._tasks) == 3)
                or second.started
                or first.started.count("slow:1") > 1
            ),
            30,
            "the rebalance",
        )
        await asyncio.sleep(0.5)
        assert not second.started  # the next owner has not begun on records still in flight here
        gate.set()
        await eventually(
            lambda: set(first.done) | set(second.done) == set(ALL),
            40,
            "everything handled after the rebalance",
        )
        await asyncio.sleep(1.0)  # room for a wrong second handling to show
    finally:
        gate.set()
        stopped.set()
        await asyncio.gather(*tasks)
    assert Counter(first.done + second.done) == Counter(ALL)  # nothing twice, nothing lost
    assert all(_in_order(first.done + second.done, c) for c in ("slow", "a"))


async def test_a_failure_in_an_overlapped_batch_is_retried_without_losing_or_repeating_others(
    kafka: Kafka,
) -> None:
    gate = asyncio.Event()
    handler = Gated(gate, fail_once="f:1")
    consumer = _consumer(kafka, f"g-{uuid.uuid4().hex[:6]}", handler)
    stopped = asyncio.Event()
    task = asyncio.create_task(consumer.run(stopped))
    try:
        # f:1 (batch 3) fails while slow:1 (batch 1) is in flight; the rest of batch 3 is handled.
        await eventually(lambda: {"g:1", "h:1", "i:1"} <= set(handler.done), 20, "batch 3 handled")
        assert "slow:1" not in handler.done and "f:1" not in handler.done
        gate.set()
        await eventually(lambda: sorted(handler.done) == sorted(ALL), 30, "everything handled")
        await asyncio.sleep(1.0)  # room for a wrong second handling to show
    finally:
        gate.set()
        stopped.set()
        await task
    assert Counter(handler.done) == Counter(ALL)
    assert Counter(handler.started)["f:1"] == 2
    assert all(_in_order(handler.done, c) for c in ("slow", "a"))
