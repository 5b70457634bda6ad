"""A Kafka client that can no longer make progress is replaced, not waited on (zaptrix.kafka.wedges).

The wedge `make faults` met (kafka-kill, 2026-12-05), rebuilt against the real Kafka: the consumer's
metadata synchronizer dies as uvloop made it die (RuntimeError on a socket the broker closed, aiokafka#1038),
then a coordinator lookup fails once and waits on that synchronizer forever, holding the lookup lock; the
next commit waits behind it. Before: nothing more was handled until the process restarted."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka.errors import NodeNotReadyError
from zaptrix.kafka import EventConsumer, EventProducer, Received, new_envelope, per_event
from zaptrix.kafka import consumer as consumer_module
from zaptrix.kafka.producer_startup import BackgroundProducer
from zaptrix.kafka.topics import FlowTopics
from zaptrix.kafka.wedges import ClientWedged, consumer_tasks, ended_tasks, producer_tasks
from zaptrix.retrying import until_stopped
from zaptrix.settings import KafkaSettings
from zaptrix.v1 import events_pb2
from zaptrix_testing.waiting import eventually

Kafka = tuple[KafkaSettings, FlowTopics, EventProducer]
UVLOOP_CLOSED = (
    "unable to perform operation on <TCPTransport closed=True reading=False>; the handler is closed"
)


@pytest.fixture
async def kafka(flow_kafka: Callable[[int], Awaitable[Kafka]]) -> Kafka:
    return await flow_kafka(1)


def _event(n: int) -> events_pb2.Envelope:
    return new_envelope(
        f"e:{n}",
        f"c{n}",
        events_pb2.PLATFORM_BITRIX24,
        customer_message=events_pb2.CustomerMessage(wamid=f"wamid.{n}", text=str(n)),
    )


def _kill_the_synchronizer(client: Any) -> None:
    """What uvloop did: the next metadata update raises RuntimeError, which ends aiokafka's synchronizer."""

    async def closed_transport(*_: Any) -> bool:
        raise RuntimeError(UVLOOP_CLOSED)

    client._metadata_update = closed_transport
    client.force_metadata_update()


def _make_the_next_lookup_fail(client: Any, coordinator: Any) -> None:
    """The coordinator is lost (the broker went away) and its next lookup fails once: aiokafka then waits
    for a metadata update, which only the synchronizer would ever bring."""
    lookup = client.coordinator_lookup
    failed: list[bool] = []

    async def once(*args: Any) -> Any:
        if not failed:
            failed.append(True)
            raise NodeNotReadyError("broker gone")
        return await lookup(*args)

    client.coordinator_lookup = once
    coordinator.coordinator_dead()


def _recording(kafka: Kafka) -> tuple[EventConsumer, list[str]]:
    """A consumer of its own group, and the event ids it has handled."""
    settings, topics, producer = kafka
    handled: list[str] = []

    async def handle(rec: Received) -> None:
        handled.append(rec.envelope.event_id)

    consumer = EventConsumer(
        settings, topics, f"g{uuid.uuid4().hex[:6]}", per_event(handle), producer, client_id="t"
    )
    return consumer, handled


async def test_a_consumer_whose_client_wedged_is_replaced_and_goes_on(kafka: Kafka) -> None:
    _, topics, producer = kafka
    consumer, handled = _recording(kafka)
    stopped = asyncio.Event()
    restarts = until_stopped(stopped, "consumer stopped with an error, restarting")
    task = asyncio.create_task(restarts(consumer.run, stopped))
    try:
        await producer.publish(topics.main, [_event(1)])
        await eventually(lambda: handled == ["e:1"], timeout_s=30, what="the first event")
        client = consumer._consumer
        assert client is not None
        _kill_the_synchronizer(client._client)
        _make_the_next_lookup_fail(client._client, client._coordinator)
        await eventually(
            lambda: ended_tasks(consumer_tasks(client)), timeout_s=5, what="the synchronizer's end"
        )
        await producer.publish(topics.main, [_event(2)])
        await eventually(lambda: "e:2" in handled, timeout_s=60, what="an event after the wedge")
        assert consumer._consumer is not client  # a fresh client took over
        left = [name for name, t in consumer_tasks(client) if t is not None and not t.done()]
        open_conns = [c for c in client._client._conns.values() if c.connected()]
        assert left == [] and open_conns == []  # the wedged one leaks no tasks, no sockets
        assert handled.count("e:1") <= 2 and handled.count("e:2") == 1
    finally:
        stopped.set()
        await asyncio.wait_for(task, 30)


async def test_a_commit_that_never_answers_ends_the_run(
    kafka: Kafka, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wedge that ends no background task: every coordinator call is bounded (COORDINATOR_WAIT_S)."""
    _, topics, producer = kafka
    monkeypatch.setattr(consumer_module, "COORDINATOR_WAIT_S", 1.0)
    consumer, handled = _recording(kafka)
    stopped = asyncio.Event()
    task = asyncio.create_task(consumer.run(stopped))
    await producer.publish(topics.main, [_event(1)])
    await eventually(lambda: handled == ["e:1"], timeout_s=30, what="the first event")
    client = consumer._consumer
    assert client is not None

    async def never(*_: Any) -> None:
        await asyncio.Event().wait()

    client.commit = never  # type: ignore[method-assign]
    await producer.publish(topics.main, [_event(2)])
    with pytest.raises(ClientWedged, match="a commit did not finish within 1 s"):
        await asyncio.wait_for(task, 30)


async def test_a_wedged_producer_is_unhealthy_and_not_live(kafka: Kafka) -> None:
    settings, _, _ = kafka
    background = BackgroundProducer(settings, "t")
    background.start()
    producer = None
    try:
        await eventually(lambda: background.producer is not None, timeout_s=30, what="the producer")
        producer = background.producer
        assert producer is not None
        assert await producer.healthy() and await background.unwedged() and producer.wedged() == []
        _kill_the_synchronizer(producer._producer.client)
        await eventually(producer.wedged, timeout_s=5, what="the producer's wedge")
        assert producer.wedged() == [f"sync_task: RuntimeError('{UVLOOP_CLOSED}')"]
        assert not await producer.healthy() and not await background.unwedged()
    finally:
        await background.stop()
    if producer is not None:  # stopped all the same: no task left running, no socket open
        assert all(t is None or t.done() for _, t in producer_tasks(producer._producer))
        assert not any(c.connected() for c in producer._producer.client._conns.values())


async def test_the_background_tasks_are_where_wedges_py_looks(kafka: Kafka) -> None:
    """The attribute names are aiokafka's, not an API: an upgrade that moves them fails here."""
    producer = kafka[2]
    tasks = producer_tasks(producer._producer)
    assert [name for name, task in tasks if isinstance(task, asyncio.Task)] == ["_sync_task", "_sender_task"]

    consumer, _ = _recording(kafka)
    stopped = asyncio.Event()
    task = asyncio.create_task(consumer.run(stopped))
    try:
        await eventually(lambda: consumer.running, timeout_s=30, what="the consumer")
        assert consumer._consumer is not None
        found = [name for name, t in consumer_tasks(consumer._consumer) if isinstance(t, asyncio.Task)]
        assert found == ["_sync_task", "_coordination_task", "_fetch_task"]
        assert ended_tasks(consumer_tasks(consumer._consumer)) == []
    finally:
        stopped.set()
        await asyncio.wait_for(task, 30)
