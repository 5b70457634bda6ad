"""What a dispatcher holds per record in flight (issue 14, memory under a backlog drain): while it lags, a
catch-up batch runs alone, so the records in flight stay within the catch-up budget; once a poll batch's records are
opened, aiokafka's raw records are not held beside their Received while the handler runs, neither by the
batch nor by the poll loop waiting for room. Against the real Kafka."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import ConsumerRecord
from zaptrix.kafka import EventConsumer, EventProducer, Outcome, Received, new_envelope
from zaptrix.kafka.topics import FlowTopics
from zaptrix.settings import KafkaSettings
from zaptrix.v1 import events_pb2
from zaptrix_testing.waiting import eventually

Kafka = tuple[KafkaSettings, FlowTopics, EventProducer]
BATCH = 100


def _envelopes(n: int) -> list[events_pb2.Envelope]:
    """``n`` messages of distinct conversations: batches never wait for each other's keys (as across partitions)."""
    return [
        new_envelope(
            f"e{i}",
            f"conv-{i}",
            events_pb2.PLATFORM_WHATSAPP,
            customer_message=events_pb2.CustomerMessage(wamid=f"wamid.{i}", text="x" * 200),
        )
        for i in range(n)
    ]


async def test_a_catch_up_batch_runs_alone_within_its_budget(
    flow_kafka: Callable[[int], Awaitable[Kafka]],
) -> None:
    settings, topics, producer = await flow_kafka(1)
    total, normal, budget = 1500, 50, 400
    await producer.publish(topics.main, _envelopes(total))
    small = settings.model_copy(update={"consumer_max_records": normal, "consumer_max_in_flight_batches": 2})
    in_flight: list[int] = []  # records in the handler now
    sizes: list[int] = []
    peak = 0
    beside_catch_up = 0  # handler calls that overlapped a catch-up batch

    async def handle(batch: list[Received]) -> list[Outcome]:
        nonlocal peak, beside_catch_up
        sizes.append(len(batch))
        in_flight.append(len(batch))
        peak = max(peak, sum(in_flight))
        if len(in_flight) > 1 and max(in_flight) > normal:
            beside_catch_up += 1
        await asyncio.sleep(0.05)  # the next poll comes while this batch is in flight
        in_flight.remove(len(batch))
        return [Outcome.ok()] * len(batch)

    consumer = EventConsumer(
        small,
        topics,
        f"g-{uuid.uuid4().hex[:6]}",
        handle,
        producer,
        client_id="t",
        catch_up_records=budget,
    )
    stopped = asyncio.Event()
    task = asyncio.create_task(consumer.run(stopped))
    try:
        await eventually(lambda: sum(sizes) >= total, 30, "everything handled")
    finally:
        stopped.set()
        await task
    assert max(sizes) > normal  # it caught up with larger batches ...
    # ... each alone in flight: never more than the budget held (the old code: two of 400 at once).
    assert peak <= budget, f"{peak} records in flight, budget {budget}"
    assert beside_catch_up == 0


def _raw_records(topic: str) -> int:
    """aiokafka's ConsumerRecord objects of ``topic`` alive in this process."""
    return sum(1 for o in gc.get_objects() if type(o) is ConsumerRecord and o.topic == topic)


async def test_raw_records_are_not_held_while_two_batches_are_in_flight(
    flow_kafka: Callable[[int], Awaitable[Kafka]],
) -> None:
    settings, topics, producer = await flow_kafka(1)
    await producer.publish(topics.main, _envelopes(3 * BATCH))
    small = settings.model_copy(update={"consumer_max_records": BATCH, "consumer_max_in_flight_batches": 2})
    gate = asyncio.Event()
    handled: list[int] = []

    async def handle(batch: list[Received]) -> list[Outcome]:
        handled.append(len(batch))
        await gate.wait()
        return [Outcome.ok()] * len(batch)

    consumer = EventConsumer(small, topics, f"g-{uuid.uuid4().hex[:6]}", handle, producer, client_id="t")
    stopped = asyncio.Event()
    task = asyncio.create_task(consumer.run(stopped))
    try:
        # Two batches are in the handler, and the poll loop waits for room (it polled the second one).
        await eventually(lambda: sum(handled) >= 2 * BATCH and len(consumer._tasks) == 2, 20, "2 batches")
        await asyncio.sleep(0.5)  # the loop is waiting for room, as it does through a whole catch-up batch
        held = _raw_records(topics.main)
        # The old code held every raw record of both batches (200) while their Received were handled.
        assert held <= 2, f"{held} raw records held beside {sum(handled)} records in flight"
        gate.set()
        await eventually(lambda: sum(handled) >= 3 * BATCH, 20, "everything handled")
    finally:
        gate.set()
        stopped.set()
        await task


@pytest.mark.processes  # a fresh interpreter: what the process's imports load
def test_a_dispatcher_process_does_not_import_sanic() -> None:
    """The dispatchers and the gRPC servers serve no Sanic app: its import costs ~7 MiB of RSS each."""
    code = (
        "import sys, zaptrix.dispatcher_process, zaptrix.process; "
        "sys.exit(1 if 'sanic' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
