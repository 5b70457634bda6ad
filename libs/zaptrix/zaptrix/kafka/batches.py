"""Records of concurrent publishes coalesced per partition: one batch in flight, the next one filling.

aiokafka's ``send()`` spends ~20 µs of Python on every record (a metadata wait, a size check, the partition
sets, an accumulator coroutine, a future and a RecordMetadata each); at the ingress edge that was a fifth
of a webhook's CPU (docs/benchmarks.md). Here a record costs one append to its partition's open batch (C)
and one future. A partition's batch goes to aiokafka (``send_batch``, closed: no linger) as soon as the
partition has none in flight, so batches grow with the load instead of waiting on a timer (Nagle's
algorithm): one record alone leaves at once, 30 concurrent webhooks share a batch.

Order: a partition's records leave in the order they were added, one batch after the other, each only after
the previous one was acknowledged (aiokafka's idempotent producer numbers them). A batch Kafka refuses fails
every record in it; the next batch is still sent.

Bounded: behind the batch in flight a partition holds at most ``WAITING_BATCHES`` (16 KiB each, aiokafka's
batch size); a record that would need one more waits for room (``room``) within its publish's deadline, as
aiokafka's ``send()`` waits when its batch is full. A stalled broker so turns into 503s at the deadline, not
into a growing heap of records nobody waits for.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
from collections import deque
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, ProducerClosed
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from zaptrix.kafka.envelope import Headers
from zaptrix.kafka.partitioner import KeyPartitioner

Landed = tuple[int, int]  # (partition, offset)
_TP = tuple[str, int]
WAITING_BATCHES = 4


class _Batch:
    __slots__ = ("builder", "waiters")

    def __init__(self, builder: Any) -> None:
        self.builder = builder
        self.waiters: list[tuple[asyncio.Future[Landed], int]] = []  # (future, offset in the batch)

    def done(self, partition: int, base_offset: int) -> None:
        for fut, offset in self.waiters:
            if not fut.done():  # a waiter past its deadline was cancelled
                fut.set_result((partition, base_offset + offset))

    def fail(self, exc: BaseException) -> None:
        if not isinstance(exc, KafkaError | asyncio.CancelledError):  # e.g. a partition gone from metadata
            exc = KafkaError(f"the batch could not be sent: {exc!r}")
        for fut, _ in self.waiters:
            if not fut.done():
                fut.set_exception(copy.copy(exc))  # one traceback each, as aiokafka does


class PartitionBatches:
    """``add`` a keyed record, await the future it returns: (partition, offset) once Kafka has it."""

    def __init__(
        self, producer: AIOKafkaProducer, partitioner: KeyPartitioner, max_request_bytes: int
    ) -> None:
        self._producer = producer
        self._partitioner = partitioner
        self._max_request_bytes = max_request_bytes
        self._filling: dict[_TP, deque[_Batch]] = {}
        self._senders: dict[_TP, asyncio.Task[None]] = {}
        self._room: dict[_TP, asyncio.Future[None]] = {}  # set when a full partition's sender takes a batch
        self.batches_sent = 0  # for tests and benchmarks: how well records coalesce
        self._closed = False

    def add(self, topic: str, key: bytes, value: bytes, headers: Headers) -> asyncio.Future[Landed] | None:
        """The record's future, or None when it cannot be added yet: the topic's partitions are not known,
        or its partition is full (await ``room``, then add again)."""
        if self._closed:
            raise ProducerClosed()
        tp = self._partition_of(topic, key)
        if tp is None:
            return None
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
        if size > self._max_request_bytes:  # as send() refuses it: Kafka would refuse the whole batch
            raise MessageSizeTooLargeError(
                f"The message is {size} bytes when serialized, over max_request_size ({self._max_request_bytes})"
            )
        queue = self._filling.get(tp)
        if queue is None:
            queue = self._filling[tp] = deque()
        batch = queue[-1] if queue else None
        meta = batch.builder.append(timestamp=None, key=key, value=value, headers=headers) if batch else None
        if batch is None or meta is None:  # no open batch, or it is full: a new one (its first record fits)
            if len(queue) >= WAITING_BATCHES:
                return None
            batch = _Batch(self._producer.create_batch())
            queue.append(batch)
            meta = batch.builder.append(timestamp=None, key=key, value=value, headers=headers)
        fut: asyncio.Future[Landed] = asyncio.get_running_loop().create_future()
        batch.waiters.append((fut, meta.offset))
        if tp not in self._senders:
            # Its own (empty) context: the task outlives the publish that started it.
            self._senders[tp] = asyncio.get_running_loop().create_task(
                self._send(tp, queue), context=contextvars.Context()
            )
        return fut

    def _partition_of(self, topic: str, key: bytes) -> _TP | None:
        partitions = self._producer.client.cluster.partitions_for_topic(topic)
        return (topic, self._partitioner(key, list(partitions), ())) if partitions else None

    async def room(self, topic: str, key: bytes) -> None:
        """Wait until a record of ``key`` can be added: the topic's metadata (aiokafka's wait), then room on
        its partition. The caller bounds the wait (its publish's deadline)."""
        tp = self._partition_of(topic, key)
        if tp is None:
            await self._producer.partitions_for(topic)
            return
        if len(self._filling.get(tp, ())) < WAITING_BATCHES:
            return
        room = self._room.get(tp)
        if room is None:
            room = self._room[tp] = asyncio.get_running_loop().create_future()
        await asyncio.shield(room)  # one waiter's deadline does not cancel the others' wait

    async def _send(self, tp: _TP, queue: deque[_Batch]) -> None:
        try:
            while queue:
                batch = queue.popleft()
                room = self._room.pop(tp, None)
                if room is not None:
                    room.set_result(None)
                batch.builder.close()  # sent now, not after linger_ms: the previous batch was the wait
                try:
                    sent = await self._producer.send_batch(batch.builder, tp[0], partition=tp[1])
                    self.batches_sent += 1
                    meta = await sent
                except Exception as exc:  # refused or timed out (or the producer stopped): this batch only
                    batch.fail(exc)
                except BaseException as exc:  # cancelled (the loop is closing): nobody waits forever
                    batch.fail(exc)
                    for rest in queue:
                        rest.fail(exc)
                    queue.clear()
                    raise
                else:
                    batch.done(tp[1], meta.offset)
        finally:
            del self._senders[tp]
            if not queue:
                self._filling.pop(tp, None)
            room = self._room.pop(tp, None)
            if room is not None and not room.done():
                room.set_result(None)  # (cancelled) the waiters look again

    async def close(self, timeout_s: float) -> None:
        """No more records; every batch added so far handed to aiokafka and answered, for at most
        ``timeout_s``: before the producer stops (whose own stop then fails what Kafka has not taken)."""
        self._closed = True
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._senders:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            await asyncio.wait(list(self._senders.values()), timeout=left)


__all__ = ["Landed", "PartitionBatches"]
