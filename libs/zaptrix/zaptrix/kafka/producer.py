"""Idempotent producer (acks=all). publish() returns only once the broker has every record."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

from zaptrix.deadlines import Deadlines
from zaptrix.kafka.batches import Landed, PartitionBatches
from zaptrix.kafka.connection import connection_kwargs
from zaptrix.kafka.envelope import Headers, encode, event_type
from zaptrix.kafka.partitioner import KeyPartitioner
from zaptrix.kafka.wedges import abandon, ended_tasks, producer_tasks
from zaptrix.logging import get_logger
from zaptrix.metrics import EVENTS_PRODUCED
from zaptrix.settings import KafkaSettings
from zaptrix.telemetry import LazyTracer
from zaptrix.v1 import events_pb2

log = get_logger(__name__)
tracer = LazyTracer("zaptrix.kafka")


_produced_children: dict[tuple[str, str], Any] = {}


def _produced(topic: str, kind: str) -> Any:
    """The zaptrix_events_produced_total child, cached (topics and event kinds are a fixed, small set)."""
    child = _produced_children.get((topic, kind))
    if child is None:
        child = _produced_children[(topic, kind)] = EVENTS_PRODUCED.labels(topic, kind)
    return child


def _retrieve(fut: asyncio.Future[object]) -> None:
    if not fut.cancelled():
        fut.exception()


def _read_later(futures: list[asyncio.Future[object]]) -> None:
    """The others' outcomes are read, never "exception was never retrieved"."""
    for fut in futures:
        fut.add_done_callback(_retrieve)


def _attributes(topic: str, envelopes: Sequence[events_pb2.Envelope]) -> dict[str, str | int]:
    """The PRODUCER span's messaging attributes: the message's id and key when it is one."""
    attributes: dict[str, str | int] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.destination.name": topic,
    }
    if len(envelopes) == 1:
        first = envelopes[0]
        attributes["messaging.message.id"] = first.event_id
        attributes["messaging.kafka.message.key"] = first.conversation_key
        attributes["zaptrix.event_type"] = event_type(first)
    else:
        attributes["messaging.batch.message_count"] = len(envelopes)
    return attributes


class PublishError(RuntimeError):
    """Kafka did not take the records in time; the caller must not acknowledge upstream (HTTP 503)."""


class EventProducer:
    def __init__(self, settings: KafkaSettings, client_id: str) -> None:
        self.settings = settings
        self._producer = AIOKafkaProducer(
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=settings.linger_ms,
            request_timeout_ms=settings.request_timeout_ms,
            max_request_size=settings.max_request_bytes,  # agrees with the topics' max.message.bytes
            partitioner=KeyPartitioner(),  # aiokafka's partitions, hashed faster (partitioner.py)
            **connection_kwargs(settings),
        )
        self._started = False
        self._deadlines = Deadlines()  # one timer for every publish in flight, not one each
        # Keyed records go through per-partition batches (batches.py), not send() one by one.
        self._batches = PartitionBatches(self._producer, KeyPartitioner(), settings.max_request_bytes)

    async def start(self) -> None:
        await self._producer.start()
        self._started = True

    async def stop(self) -> None:
        if self._started:
            await self._batches.close(self.settings.request_timeout_ms / 1000)
            try:
                await self._producer.stop()
            except Exception as exc:  # a wedged client re-raises its ended background task's error
                if not self.wedged():
                    raise
                log.warning("Kafka producer stopped with an error", error=repr(exc))
                await abandon(self._producer)
            self._started = False

    async def publish(
        self,
        topic: str,
        envelopes: Sequence[events_pb2.Envelope],
        deadline: float | None = None,
        *,
        own_span: bool = True,
    ) -> None:
        """Send all envelopes under one PRODUCER span, then wait for every acknowledgement.

        One span per call, not per envelope: every record's headers carry this span's context, so each
        message's trace continues from it on the consumer's side (same trace, one span fewer per event
        when a webhook brings several, and no per-record context switch).

        ``own_span=False``: the caller's span already covers this send, as a webhook's SERVER span does
        (its answer waits for the acks): the records carry that span's context and a refusal is recorded
        on it (an event); no PRODUCER span. At the ingress edge that is one span per webhook instead of two
        (~22 µs less CPU per webhook, docs/benchmarks.md).

        ``deadline`` (the loop's clock, as asyncio.timeout_at; default: twice the request timeout from
        now): every record sent and acknowledged by then (at most a tick of zaptrix.deadlines late), else
        PublishError (the span records it). A caller with several calls passes one deadline to all."""
        if not envelopes:
            return
        if own_span:
            attributes = _attributes(topic, envelopes)
            span = tracer().start_span(f"{topic} publish", kind=SpanKind.PRODUCER, attributes=attributes)
            context: Context | None = trace.set_span_in_context(span)
        else:
            context = None  # the records carry the current context
        futures: list[asyncio.Future[Any]] = []
        try:
            with self._deadlines.at(deadline or self._default_deadline()):
                for env in envelopes:
                    key, value, headers = encode(env, context)
                    fut = self._batches.add(topic, key, value, headers)  # no coroutine when it can
                    futures.append(fut if fut is not None else await self._send(topic, key, value, headers))
                for fut in futures:  # in turn: no gather future, no wait_for task
                    await fut
        except BaseException as exc:
            _read_later(futures)
            if isinstance(exc, KafkaError | TimeoutError):
                if own_span:
                    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                else:  # the caller's span: its own outcome (e.g. the 503) sets its status
                    trace.get_current_span().add_event(
                        "publish refused",
                        {"messaging.destination.name": topic, "error.type": type(exc).__name__},
                    )
                raise PublishError(f"Kafka did not accept the events for {topic}: {exc!r}") from exc
            raise
        finally:
            if own_span:
                span.end()
        for env in envelopes:
            _produced(topic, event_type(env)).inc()

    async def publish_raw(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        deadline: float | None = None,
    ) -> tuple[int, int]:
        """Re-publish a record as is (retry, dead letter, replay); the headers already carry the trace.
        Returns where it landed: (partition, offset). ``deadline`` as for publish()."""
        fut: asyncio.Future[Any] | None = None
        try:
            with self._deadlines.at(deadline or self._default_deadline()):
                fut = await self._send(topic, key, value, headers)
                landed = await fut
        except BaseException as exc:
            if fut is not None:
                _read_later([fut])
            if isinstance(exc, KafkaError | TimeoutError):
                raise PublishError(f"Kafka did not accept the record for {topic}: {exc!r}") from exc
            raise
        if isinstance(landed, tuple):
            return landed
        return int(landed.partition), int(landed.offset)  # aiokafka's RecordMetadata (a keyless record)

    async def _send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers
    ) -> asyncio.Future[Landed] | asyncio.Future[Any]:
        """The record's future: its partition's batch for a keyed record, aiokafka's send() otherwise."""
        if key is None or value is None:
            sent: asyncio.Future[Any] = await self._producer.send(
                topic, value=value, key=key, headers=headers
            )
            return sent
        while (fut := self._batches.add(topic, key, value, headers)) is None:
            # The topic's metadata, or room on a full partition; the caller's deadline bounds the wait.
            await self._batches.room(topic, key)
        return fut

    def wedged(self) -> list[str]:
        """aiokafka's background tasks that ended while the producer runs (wedges.py): it can send nothing
        more, and only a new process (a new client) recovers."""
        return ended_tasks(producer_tasks(self._producer)) if self._started else []

    def _default_deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.settings.request_timeout_ms / 1000 * 2

    async def healthy(self, timeout_s: float = 2.0) -> bool:
        """True when a broker answers a metadata request now and the client is not wedged."""
        if not self._started or self.wedged():
            return False
        try:
            await asyncio.wait_for(self._producer.client.fetch_all_metadata(), timeout=timeout_s)
        except Exception:
            return False
        return True
