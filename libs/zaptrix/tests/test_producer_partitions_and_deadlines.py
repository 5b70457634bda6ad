"""The producer's key partitioner puts a key on the partition Kafka's other clients would (murmur2, as the
Java client and aiokafka): a conversation's events keep one partition, and so their order, whichever
client or version wrote them. And a publish's deadline bounds the whole publish (real Kafka)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st
from zaptrix.kafka import EventProducer, PublishError
from zaptrix.kafka.partitioner import KeyPartitioner, murmur2
from zaptrix.kafka.topics import FlowTopics
from zaptrix.settings import KafkaSettings

FlowKafka = Callable[[int], Awaitable[tuple[KafkaSettings, FlowTopics, EventProducer]]]

# org.apache.kafka.common.utils.UtilsTest.testMurmur2: the Java client's values (signed 32-bit)
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def _signed(h: int) -> int:
    return h - (1 << 32) if h >= 1 << 31 else h


def test_murmur2_is_the_java_clients() -> None:
    assert {key: _signed(murmur2(key)) for key in JAVA_MURMUR2} == JAVA_MURMUR2


@given(key=st.binary(max_size=300), partitions=st.integers(min_value=1, max_value=64))
def test_a_key_lands_where_aiokafka_puts_it(key: bytes, partitions: int) -> None:
    every = list(range(partitions))
    ours = KeyPartitioner()
    assert ours(key, every, every) == DefaultPartitioner()(key, every, every)
    assert ours(key, every, every) == DefaultPartitioner()(key, every, every)  # again, from its memory


def test_a_keyless_record_goes_to_an_available_partition() -> None:
    ours = KeyPartitioner()
    assert {ours(None, [0, 1, 2, 3], [2]) for _ in range(50)} == {2}
    assert {ours(None, [0, 1], []) for _ in range(200)} == {0, 1}


def test_the_memory_of_hashes_stays_bounded() -> None:
    ours = KeyPartitioner()
    for n in range(10_000):
        ours(f"100:{n}".encode(), [0, 1, 2], [0, 1, 2])
    assert 0 < len(ours._hashes) <= 4096


async def test_the_producer_writes_each_key_to_its_murmur2_partition(flow_kafka: FlowKafka) -> None:
    _, topics, producer = await flow_kafka(6)
    every = list(range(6))
    for n in range(24):
        key = f"100000000000001:4917{n:08d}".encode()
        partition, _ = await producer.publish_raw(topics.main, key, b"value", [])
        assert partition == DefaultPartitioner()(key, every, every)


async def test_a_publish_kafka_cannot_take_ends_at_its_deadline(flow_kafka: FlowKafka) -> None:
    """The deadline covers the sends too: a topic Kafka does not have (no auto-creation) is refused at the
    caller's deadline, not after aiokafka's metadata wait (the request timeout, 5 s)."""
    _, topics, producer = await flow_kafka(1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(PublishError):
        await producer.publish_raw(f"{topics.main}-missing", b"k", b"v", [], deadline=started + 0.5)
    assert loop.time() - started < 1.5
