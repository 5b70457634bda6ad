"""EventProducer's per-partition batches (zaptrix.kafka.batches), against the real Kafka: concurrent publishes
share batches, a key's records keep their order and land once each, a record too large is refused alone, a
batch over the batch size splits, and stopping the producer leaves no publish waiting. And, as a unit, a
stalled partition holds a bounded backlog."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.producer.message_accumulator import BatchBuilder
from zaptrix.kafka import EventProducer, PublishError
from zaptrix.kafka.batches import WAITING_BATCHES, PartitionBatches
from zaptrix.kafka.partitioner import KeyPartitioner
from zaptrix.kafka.topics import FlowTopics
from zaptrix.settings import KafkaSettings

FlowKafka = Callable[[int], Awaitable[tuple[KafkaSettings, FlowTopics, EventProducer]]]


async def _records(
    settings: KafkaSettings, topic: str, partitions: int
) -> dict[int, list[tuple[int, bytes, bytes]]]:
    """Every record of the topic by partition: (offset, key, value), up to the end offsets of now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: dict[int, list[tuple[int, bytes, bytes]]] = {p: [] for p in range(partitions)}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while sum(len(v) for v in out.values()) < sum(ends.values()) and loop.time() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                out[tp.partition] += [(r.offset, r.key or b"", r.value or b"") for r in records]
        return out
    finally:
        await consumer.stop()


async def test_concurrent_publishes_share_batches_and_keep_each_keys_order(flow_kafka: FlowKafka) -> None:
    settings, topics, producer = await flow_kafka(3)
    keys = [f"100:49{k:03d}".encode() for k in range(20)]

    async def conversation(key: bytes) -> list[tuple[int, int]]:
        # One conversation's records one after the other, while 19 others do the same.
        return [await producer.publish_raw(topics.main, key, b"%d" % n, []) for n in range(25)]

    landed = await asyncio.gather(*(conversation(k) for k in keys))
    assert producer._batches.batches_sent < 20 * 25 / 2  # coalesced: ~20 concurrent records per batch

    stored = await _records(settings, topics.main, 3)
    by_place = {(p, off): (key, value) for p, records in stored.items() for off, key, value in records}
    assert len(by_place) == 20 * 25  # each once
    for key, places in zip(keys, landed, strict=True):
        # Where publish_raw said each record landed is where it is, in the order it was published.
        assert [by_place[place] for place in places] == [(key, b"%d" % n) for n in range(25)]
        assert len({p for p, _ in places}) == 1
        assert [off for _, off in places] == sorted(off for _, off in places)


async def test_a_batch_over_the_batch_size_is_split_and_every_record_lands(flow_kafka: FlowKafka) -> None:
    settings, topics, producer = await flow_kafka(1)
    value = b"x" * 3000  # aiokafka's batches hold 16 KiB: five or so of these each
    landed = await asyncio.gather(
        *(producer.publish_raw(topics.main, b"k", value + b"%d" % n, []) for n in range(40))
    )
    assert [off for _, off in landed] == sorted(off for _, off in landed)
    assert len({off for _, off in landed}) == 40
    stored = await _records(settings, topics.main, 1)
    assert [v for _, _, v in stored[0]] == [value + b"%d" % n for n in range(40)]


async def test_a_record_over_the_request_size_is_refused_alone(flow_kafka: FlowKafka) -> None:
    settings, topics, producer = await flow_kafka(1)
    too_large = b"x" * (settings.max_request_bytes + 1)
    results = await asyncio.gather(
        producer.publish_raw(topics.main, b"k", b"before", []),
        producer.publish_raw(topics.main, b"k", too_large, []),
        producer.publish_raw(topics.main, b"k", b"after", []),
        return_exceptions=True,
    )
    assert isinstance(results[1], PublishError)
    assert not isinstance(results[0], BaseException) and not isinstance(results[2], BaseException)
    stored = await _records(settings, topics.main, 1)
    assert [v for _, _, v in stored[0]] == [b"before", b"after"]


async def test_stopping_the_producer_leaves_no_publish_waiting(flow_kafka: FlowKafka) -> None:
    """Publishes in flight when the producer stops are sent (or refused), never left waiting."""
    settings, topics, producer = await flow_kafka(2)
    await producer.publish_raw(topics.main, b"k0", b"first", [])  # the topic's partitions are known
    pending = [
        asyncio.ensure_future(producer.publish_raw(topics.main, b"k%d" % (n % 7), b"%d" % n, []))
        for n in range(200)
    ]
    await asyncio.sleep(0)  # added to their batches, not yet acknowledged
    await producer.stop()
    results = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 10)
    delivered = [r for r in results if not isinstance(r, BaseException)]
    assert all(isinstance(r, PublishError) for r in results if isinstance(r, BaseException))
    stored = await _records(settings, topics.main, 2)
    assert sum(len(v) for v in stored.values()) == len(delivered) + 1
    with pytest.raises(PublishError):
        await producer.publish_raw(topics.main, b"k", b"after the stop", [])


class _StalledBroker:
    """aiokafka's producer as the batches see it, with a broker that acknowledges only when told to."""

    def __init__(self) -> None:
        self.client = SimpleNamespace(cluster=SimpleNamespace(partitions_for_topic=lambda topic: {0}))
        self.in_flight: list[asyncio.Future[Any]] = []

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(16384, 0)  # aiokafka's batch size, no compression

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.in_flight.append(fut)
        return fut

    def acknowledge(self) -> None:
        self.in_flight.pop(0).set_result(SimpleNamespace(offset=0))


async def test_a_stalled_partition_holds_a_bounded_backlog_and_makes_room_as_batches_leave() -> None:
    broker = _StalledBroker()
    batches = PartitionBatches(broker, KeyPartitioner(), 1_000_000)  # type: ignore[arg-type]
    value = b"x" * 4000  # four to a 16 KiB batch
    added = []
    while (fut := batches.add("t", b"k", value, [])) is not None:
        added.append(fut)
        await asyncio.sleep(0)  # the sender takes the first batch and waits for its acknowledgement
    assert len(broker.in_flight) == 1
    assert 4 * WAITING_BATCHES <= len(added) <= 4 * (WAITING_BATCHES + 1)  # bounded, not a heap
    waiting = asyncio.ensure_future(batches.room("t", b"k"))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # no room while the broker holds the batch in flight
    broker.acknowledge()
    await asyncio.wait_for(waiting, 1)  # the next batch left: room for one more
    assert batches.add("t", b"k", value, []) is not None
    assert added[0].done() and added[0].result() == (0, 0)  # the acknowledged batch's record
    assert not any(f.done() for f in added[1:])  # the next batch is in flight now, the others wait
