"""Consumer loop shared by both dispatchers: at-least-once, retry topic, dead-letter topic.

Offsets are committed only after every record of a poll batch has had its effect recorded or has been
moved to the retry or dead-letter topic. Each record is handled inside a CONSUMER "<topic> process" span
whose parent is the producer's context taken from the record headers, so one trace follows a message
across Kafka. Retry records carry a not-before time; their partition is paused until it is due.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from zaptrix.kafka.connection import connection_kwargs
from zaptrix.kafka.envelope import (
    H_ATTEMPT,
    H_DLQ_AT,
    H_DLQ_REASON,
    H_DLQ_SOURCE,
    H_NOT_BEFORE,
    EnvelopeError,
    Headers,
    decode,
    event_type,
    extract_context,
    header,
    now_ms,
    without_bookkeeping,
)
from zaptrix.kafka.producer import EventProducer, PublishError
from zaptrix.kafka.topics import FlowTopics
from zaptrix.logging import bounded_reason, get_logger
from zaptrix.metrics import CONSUMER_LAG, DEAD_LETTERS, EVENTS_HANDLED, HANDLE_SECONDS
from zaptrix.settings import KafkaSettings
from zaptrix.v1 import events_pb2

log = get_logger(__name__)
tracer = trace.get_tracer("zaptrix.kafka")


class TransientError(Exception):
    """Worth trying again later (5xx, timeouts, rate limits). retry_after in seconds when the peer said."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class PermanentError(Exception):
    """Will never succeed as it is: goes to the dead-letter topic with this reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Outcome:
    kind: Literal["ok", "duplicate", "retry", "dead"]
    reason: str = ""
    retry_after: float | None = None

    @classmethod
    def ok(cls) -> Outcome:
        return cls("ok")

    @classmethod
    def duplicate(cls) -> Outcome:
        return cls("duplicate")

    @classmethod
    def retry(cls, reason: str, retry_after: float | None = None) -> Outcome:
        return cls("retry", reason, retry_after)

    @classmethod
    def dead(cls, reason: str) -> Outcome:
        return cls("dead", reason)

    @classmethod
    def from_exception(cls, exc: BaseException) -> Outcome:
        if isinstance(exc, PermanentError):
            return cls.dead(exc.reason)
        if isinstance(exc, TransientError):
            return cls.retry(exc.reason, exc.retry_after)
        return cls.retry(f"unexpected {type(exc).__name__}: {exc}")


@dataclass
class Received:
    envelope: events_pb2.Envelope
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Headers
    attempt: int
    span: Span = field(repr=False)

    @property
    def event_type(self) -> str:
        return event_type(self.envelope)


BatchHandler = Callable[[list[Received]], Awaitable[list[Outcome]]]
EventHandler = Callable[[Received], Awaitable[Outcome | None]]
# Called once a record is in the dead-letter topic, with its envelope and the (bounded) reason: the service
# tells whoever must know (a notice in the operator's chat). Its failures are logged, never raised.
DeadLetterHook = Callable[[events_pb2.Envelope, str], Awaitable[None]]


def per_event(handler: EventHandler, concurrency: int = 64) -> BatchHandler:
    """Adapt a per-event handler: one conversation's events run in order, conversations run concurrently."""
    limit = asyncio.Semaphore(concurrency)

    async def run_one(rec: Received) -> Outcome:
        with trace.use_span(rec.span, end_on_exit=False):
            try:
                return await handler(rec) or Outcome.ok()
            except Exception as exc:
                if not isinstance(exc, TransientError | PermanentError):
                    log.exception("handler failed", event_id=rec.envelope.event_id)
                return Outcome.from_exception(exc)

    async def run_conversation(items: list[tuple[int, Received]], out: list[Outcome | None]) -> None:
        async with limit:
            for index, rec in items:
                out[index] = await run_one(rec)

    async def handle(batch: list[Received]) -> list[Outcome]:
        groups: OrderedDict[str, list[tuple[int, Received]]] = OrderedDict()
        for index, rec in enumerate(batch):
            groups.setdefault(rec.envelope.conversation_key, []).append((index, rec))
        out: list[Outcome | None] = [None] * len(batch)
        await asyncio.gather(*(run_conversation(items, out) for items in groups.values()))
        return [o or Outcome.retry("not handled") for o in out]

    return handle


class EventConsumer:
    def __init__(
        self,
        settings: KafkaSettings,
        topics: FlowTopics,
        group_id: str,
        handler: BatchHandler,
        producer: EventProducer,
        *,
        client_id: str,
        max_attempts: int = 8,
        retry_base_s: float = 2.0,
        retry_max_s: float = 900.0,
        on_dead_letter: DeadLetterHook | None = None,
    ) -> None:
        self.settings = settings
        self.topics = topics
        self.group_id = group_id
        self.handler = handler
        self.producer = producer
        self.client_id = client_id
        self.max_attempts = max_attempts
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.on_dead_letter = on_dead_letter
        self.last_poll_at = 0.0
        self.running = False
        self._consumer: AIOKafkaConsumer | None = None

    def healthy(self, stale_after_s: float = 60.0) -> bool:
        return self.running and time.monotonic() - self.last_poll_at < stale_after_s

    async def run(self, stopped: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            self.topics.main,
            self.topics.retry,
            group_id=self.group_id,
            client_id=self.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.settings.consumer_fetch_max_wait_ms,
            **connection_kwargs(self.settings),
        )
        self._consumer = consumer
        await consumer.start()
        self.running = True
        log.info("consumer started", topics=[self.topics.main, self.topics.retry], group=self.group_id)
        try:
            while not stopped.is_set():
                data = await consumer.getmany(timeout_ms=200, max_records=self.settings.consumer_max_records)
                self.last_poll_at = time.monotonic()
                if data:
                    await self._process(consumer, data)
                    await self._report_lag(consumer)
        finally:
            self.running = False
            await consumer.stop()
            log.info("consumer stopped", group=self.group_id)

    async def _process(
        self, consumer: AIOKafkaConsumer, data: dict[TopicPartition, list[ConsumerRecord]]
    ) -> None:
        ready: list[ConsumerRecord] = []
        commit: dict[TopicPartition, int] = {}
        for tp, records in data.items():
            for rec in records:
                if tp.topic == self.topics.retry and self._not_yet_due(consumer, tp, rec):
                    break
                ready.append(rec)
                commit[tp] = rec.offset + 1
        batch: list[Received] = []
        for rec in ready:
            received = self._open(rec)
            if isinstance(received, Received):
                batch.append(received)
            else:  # not an envelope we can read: nothing will ever handle it
                headers = list(rec.headers or [])
                await self._send_dead_letter(rec.topic, rec.key, rec.value, headers, received, 1)
                EVENTS_HANDLED.labels(rec.topic, "unknown", "dead_lettered").inc()
        if batch:
            started = time.perf_counter()
            try:
                outcomes = await self.handler(batch)
            except Exception as exc:  # a broken batch handler must not lose the batch
                log.exception("batch handler failed", size=len(batch))
                outcomes = [Outcome.from_exception(exc)] * len(batch)
            if len(outcomes) != len(batch):
                raise RuntimeError("batch handler returned a different number of outcomes")
            HANDLE_SECONDS.labels(self.topics.main).observe((time.perf_counter() - started) / len(batch))
            for rec, outcome in zip(batch, outcomes, strict=True):
                await self._route(rec, outcome)
        if commit:
            await consumer.commit(commit)

    def _not_yet_due(self, consumer: AIOKafkaConsumer, tp: TopicPartition, rec: ConsumerRecord) -> bool:
        due = int(header(rec.headers, H_NOT_BEFORE) or 0)
        wait_ms = due - now_ms()
        if wait_ms <= 0:
            return False
        # Rewind to this record and pause the partition until it is due; other partitions go on.
        consumer.seek(tp, rec.offset)
        consumer.pause(tp)
        asyncio.get_running_loop().call_later(wait_ms / 1000, consumer.resume, tp)
        return True

    def _open(self, rec: ConsumerRecord) -> Received | str:
        """The record as a Received with its processing span open, or why it cannot be read."""
        headers: Headers = list(rec.headers or [])
        parent = extract_context(headers)
        span = tracer.start_span(
            f"{rec.topic} process",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.destination.name": rec.topic,
                "messaging.destination.partition.id": str(rec.partition),
                "messaging.kafka.offset": rec.offset,
                "messaging.consumer.group.name": self.group_id,
            },
        )
        try:
            env = decode(rec.value, headers)
        except EnvelopeError as exc:
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            span.end()
            return f"undecodable: {exc}"
        span.set_attribute("messaging.message.id", env.event_id)
        span.set_attribute("zaptrix.event_type", event_type(env))
        attempt = int(header(headers, H_ATTEMPT) or 1)
        return Received(env, rec.topic, rec.partition, rec.offset, rec.key, rec.value, headers, attempt, span)

    async def _route(self, rec: Received, outcome: Outcome) -> None:
        etype = rec.event_type
        try:
            if outcome.kind in ("ok", "duplicate"):
                EVENTS_HANDLED.labels(rec.topic, etype, outcome.kind).inc()
                return
            if outcome.kind == "retry" and rec.attempt < self.max_attempts:
                delay = self._backoff(rec.attempt, outcome.retry_after)
                headers = [
                    *without_bookkeeping(rec.headers),
                    (H_ATTEMPT, str(rec.attempt + 1).encode()),
                    (H_NOT_BEFORE, str(now_ms() + int(delay * 1000)).encode()),
                ]
                await self._publish(self.topics.retry, rec.key, rec.value, headers)
                EVENTS_HANDLED.labels(rec.topic, etype, "retried").inc()
                log.warning(
                    "event scheduled for retry",
                    event_id=rec.envelope.event_id,
                    attempt=rec.attempt,
                    delay_s=round(delay, 1),
                    reason=outcome.reason,
                )
                return
            reason = outcome.reason
            if outcome.kind == "retry":
                reason = f"retries exhausted after {rec.attempt} attempts: {outcome.reason}"
            await self._send_dead_letter(rec.topic, rec.key, rec.value, rec.headers, reason, rec.attempt)
            EVENTS_HANDLED.labels(rec.topic, etype, "dead_lettered").inc()
        finally:
            if outcome.kind in ("ok", "duplicate"):
                rec.span.set_status(Status(StatusCode.OK))
            else:
                rec.span.set_status(Status(StatusCode.ERROR, outcome.reason[:200]))
            rec.span.set_attribute("zaptrix.outcome", outcome.kind)
            rec.span.end()

    async def _send_dead_letter(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers, reason: str, attempt: int
    ) -> None:
        reason = bounded_reason(reason)  # exception texts are not ours: one line, no credentials, bounded
        dlq_headers = [
            *without_bookkeeping(headers),
            (H_ATTEMPT, str(attempt).encode()),
            (H_DLQ_REASON, reason.encode()),
            (H_DLQ_SOURCE, topic.encode()),
            (H_DLQ_AT, datetime.now(UTC).isoformat().encode()),
        ]
        await self._publish(self.topics.dlq, key, value, dlq_headers)
        DEAD_LETTERS.labels(self.topics.dlq, reason.split(":", 1)[0][:60]).inc()
        log.error("event dead-lettered", event_id=header(headers, "zaptrix-event-id"), reason=reason)
        await self._dead_letter_hook(value, headers, reason)

    async def _dead_letter_hook(self, value: bytes | None, headers: Headers, reason: str) -> None:
        if self.on_dead_letter is None or value is None:
            return
        try:
            env = decode(value, headers)
        except EnvelopeError:
            return  # not an envelope: there is nobody to tell but the log above
        try:
            await self.on_dead_letter(env, reason)
        except Exception:  # the dead letter is the evidence; a failed notice must not block the partition
            log.exception("dead-letter notice failed", event_id=env.event_id)

    async def _publish(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers) -> None:
        """Retry/DLQ publishing must not fail silently: keep trying; offsets stay uncommitted meanwhile."""
        delay = 0.5
        while True:
            try:
                await self.producer.publish_raw(topic, key, value, headers)
                return
            except PublishError:
                log.warning("cannot publish to Kafka, will try again", topic=topic, delay_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with full jitter, never sooner than the peer's Retry-After."""
        ceiling = min(self.retry_max_s, self.retry_base_s * 2 ** (attempt - 1))
        delay = random.uniform(ceiling / 2, ceiling)
        return max(delay, retry_after or 0.0)

    async def _report_lag(self, consumer: AIOKafkaConsumer) -> None:
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            position = await consumer.position(tp)
            CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, highwater - position))
