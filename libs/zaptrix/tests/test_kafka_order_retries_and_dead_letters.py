"""Through the real broker: trace context survives Kafka, retries and dead letters lose nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY
from zaptrix.kafka import (
    EventConsumer,
    EventProducer,
    Flow,
    FlowTopics,
    Outcome,
    PermanentError,
    Received,
    TransientError,
    new_envelope,
    per_event,
)
from zaptrix.kafka.envelope import H_ATTEMPT, H_DLQ_REASON, H_DLQ_SOURCE, H_NOT_BEFORE, encode, header, now_ms
from zaptrix.replay import replay_flow
from zaptrix.settings import KafkaSettings
from zaptrix.v1 import events_pb2


@pytest.fixture
async def kafka(
    flow_kafka: Callable[[int], Awaitable[tuple[KafkaSettings, FlowTopics, EventProducer]]],
) -> tuple[KafkaSettings, FlowTopics, EventProducer]:
    return await flow_kafka(3)


def _event(n: int, key: str = "100:4915") -> events_pb2.Envelope:
    return new_envelope(
        f"wa:wamid.{n}",
        key,
        events_pb2.PLATFORM_WHATSAPP,
        customer_message=events_pb2.CustomerMessage(wamid=f"wamid.{n}", text=f"message {n}"),
    )


async def _consume_until(
    settings: KafkaSettings,
    topics: FlowTopics,
    producer: EventProducer,
    handler: Callable[[Received], Awaitable[Outcome | None]],
    done: Callable[[], bool],
    timeout_s: float = 30.0,
) -> None:
    consumer = EventConsumer(
        settings,
        topics,
        f"g-{uuid.uuid4().hex[:6]}",
        per_event(handler),
        producer,
        client_id="t",
        retry_base_s=0.2,
    )
    stopped = asyncio.Event()
    task = asyncio.create_task(consumer.run(stopped))
    try:
        async with asyncio.timeout(timeout_s):
            while not done():
                await asyncio.sleep(0.05)
    finally:
        stopped.set()
        await task


async def _read_all(
    settings: KafkaSettings, topic: str, expect: int
) -> list[tuple[bytes, list[tuple[str, bytes]]]]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=settings.bootstrap_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    out: list[tuple[bytes, list[tuple[str, bytes]]]] = []
    try:
        async with asyncio.timeout(20):
            while len(out) < expect:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    out += [(r.value, list(r.headers)) for r in records]
    finally:
        await consumer.stop()
    return out


async def test_trace_continues_across_the_broker(
    kafka: tuple[KafkaSettings, FlowTopics, EventProducer], spans: InMemorySpanExporter
) -> None:
    settings, topics, producer = kafka
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("POST /webhooks/meta", kind=SpanKind.SERVER) as root:
        await producer.publish(topics.main, [_event(1), _event(2)])
    seen: dict[str, tuple[int, int]] = {}

    async def handler(rec: Received) -> None:
        with tracer.start_as_current_span("deliver") as span:
            ctx = span.get_span_context()
            seen[rec.envelope.event_id] = (ctx.trace_id, rec.attempt)

    await _consume_until(settings, topics, producer, handler, lambda: len(seen) == 2)
    trace_id = root.get_span_context().trace_id
    assert {t for t, _ in seen.values()} == {trace_id}
    by_name = {s.name: s for s in spans.get_finished_spans() if s.context.trace_id == trace_id}
    publish, process = by_name[f"{topics.main} publish"], by_name[f"{topics.main} process"]
    assert publish.kind == SpanKind.PRODUCER and process.kind == SpanKind.CONSUMER
    assert process.parent is not None and process.parent.span_id in {
        s.context.span_id for s in spans.get_finished_spans() if s.name == f"{topics.main} publish"
    }
    assert (
        by_name["deliver"].parent is not None and by_name["deliver"].parent.span_id == process.context.span_id
    )


async def test_one_conversation_stays_in_order(
    kafka: tuple[KafkaSettings, FlowTopics, EventProducer],
) -> None:
    settings, topics, producer = kafka
    await producer.publish(topics.main, [_event(n, key="100:1") for n in range(30)])
    order: list[str] = []

    async def handler(rec: Received) -> None:
        order.append(rec.envelope.event_id)

    await _consume_until(settings, topics, producer, handler, lambda: len(order) == 30)
    assert order == [f"wa:wamid.{n}" for n in range(30)]


async def test_transient_failure_is_retried_then_succeeds(
    kafka: tuple[KafkaSettings, FlowTopics, EventProducer],
    spans: InMemorySpanExporter,  # an SDK tracer provider: without one no span carries a traceparent
) -> None:
    settings, topics, producer = kafka
    await producer.publish(topics.main, [_event(7)])
    attempts: list[int] = []

    async def handler(rec: Received) -> Outcome:
        attempts.append(rec.attempt)
        if rec.attempt < 3:
            raise TransientError("Bitrix24 answered 502")
        return Outcome.ok()

    await _consume_until(settings, topics, producer, handler, lambda: attempts[-1:] == [3])
    assert attempts == [1, 2, 3]
    retried = await _read_all(settings, topics.retry, 2)
    assert [header(h, H_ATTEMPT) for _, h in retried] == ["2", "3"]
    assert all(header(h, "traceparent") for _, h in retried)


async def test_end_to_end_age_is_observed_for_first_attempts_only(
    kafka: tuple[KafkaSettings, FlowTopics, EventProducer],
) -> None:
    """zaptrix_event_age_seconds (the dashboard's end-to-end latency): one observation per event handled on its
    first attempt from the main topic; an event that needed a retry is counted as retried, not as an age."""
    settings, topics, producer = kafka
    await producer.publish(topics.main, [_event(20, key="100:20"), _event(21, key="100:21")])

    def sample(name: str, labels: dict[str, str]) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    async def handler(rec: Received) -> Outcome:
        if rec.envelope.event_id == "wa:wamid.21" and rec.attempt == 1:
            raise TransientError("Bitrix24 answered 502")
        return Outcome.ok()

    retried_ok = {"topic": topics.retry, "event_type": "customer_message", "outcome": "ok"}
    await _consume_until(
        settings,
        topics,
        producer,
        handler,
        lambda: sample("zaptrix_events_handled_total", retried_ok) == 1,
    )
    assert sample("zaptrix_event_age_seconds_count", {"topic": topics.main}) == 1
    assert sample("zaptrix_event_age_seconds_count", {"topic": topics.retry}) == 0
    assert sample("zaptrix_event_age_seconds_sum", {"topic": topics.main}) >= 0


async def test_permanent_failure_and_garbage_go_to_the_dead_letter_topic_and_replay(
    kafka: tuple[KafkaSettings, FlowTopics, EventProducer],
) -> None:
    settings, topics, producer = kafka
    raw = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    await raw.start()
    await raw.send_and_wait(topics.main, b"not protobuf", key=b"k")
    await raw.stop()
    await producer.publish(topics.main, [_event(9)])
    handled: list[str] = []

    async def refuse(rec: Received) -> None:
        handled.append(rec.envelope.event_id)
        raise PermanentError("ERROR_ARGUMENT: The line with this ID is inactive")

    await _consume_until(settings, topics, producer, refuse, lambda: bool(handled))
    dead = await _read_all(settings, topics.dlq, 2)
    reasons = sorted(header(h, H_DLQ_REASON) or "" for _, h in dead)
    assert reasons[0].startswith("ERROR_ARGUMENT") and reasons[1].startswith("undecodable")
    assert {header(h, H_DLQ_SOURCE) for _, h in dead} == {topics.main}

    # Once the cause is fixed, the operator replays the dead letters; the good one is handled again.
    replayed = await replay_flow(settings, Flow.WA_TO_B24)
    assert sorted(r.letter.event_id for r in replayed) == ["", "wa:wamid.9"]
    again = await replay_flow(settings, Flow.WA_TO_B24)
    assert again == [], "a dead letter is replayed once"
    ok: list[str] = []

    async def accept(rec: Received) -> None:
        ok.append(rec.envelope.event_id)

    await _consume_until(settings, topics, producer, accept, lambda: "wa:wamid.9" in ok)


async def test_a_retry_record_claiming_a_far_future_time_does_not_freeze_its_partition(
    kafka: tuple[KafkaSettings, FlowTopics, EventProducer],
) -> None:
    settings, topics, producer = kafka
    raw = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    await raw.start()
    far = str(now_ms() + 10 * 365 * 86400 * 1000).encode()  # written by an old version, or by anyone
    for n, garbage_attempt in ((11, b"2"), (12, b"not a number")):
        key, value, headers = encode(_event(n))
        await raw.send_and_wait(
            topics.retry,
            value,
            key=key,
            headers=[*headers, (H_ATTEMPT, garbage_attempt), (H_NOT_BEFORE, far)],
            partition=0,
        )
    await raw.stop()
    attempts: list[int] = []

    async def handler(rec: Received) -> None:
        attempts.append(rec.attempt)

    await _consume_until(settings, topics, producer, handler, lambda: len(attempts) == 2)
    assert attempts == [2, 1]  # a garbage attempt header counts as the first attempt


async def test_a_finished_batch_is_committed_with_the_next_batch_s_start(
    kafka: tuple[KafkaSettings, FlowTopics, EventProducer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One commit per batch under load (the end of one rides with the start mark of the next); once the
    polls come back empty, the end is committed without a start mark."""
    settings, topics, producer = kafka
    settings = settings.model_copy(update={"consumer_max_records": 5})
    await producer.publish(topics.main, [_event(n, key="100:1") for n in range(30)])
    commits: list[dict[TopicPartition, tuple[int, object]]] = []
    real_commit = EventConsumer._commit

    async def counting(
        self: EventConsumer, consumer: object, offsets: dict[TopicPartition, tuple[int, object]]
    ) -> None:
        commits.append(dict(offsets))
        await real_commit(self, consumer, offsets)  # type: ignore[arg-type]

    monkeypatch.setattr(EventConsumer, "_commit", counting)
    batches: list[int] = []

    async def handler(batch: list[Received]) -> list[Outcome]:
        batches.append(len(batch))
        return [Outcome.ok()] * len(batch)

    group = f"g-{uuid.uuid4().hex[:6]}"
    consumer = EventConsumer(settings, topics, group, handler, producer, client_id="t")
    stopped = asyncio.Event()
    task = asyncio.create_task(consumer.run(stopped))
    try:
        async with asyncio.timeout(30):
            while sum(batches) < 30 or any(m is not None for o in commits[-1:] for _, m in o.values()):
                await asyncio.sleep(0.05)
    finally:
        stopped.set()
        await task
    assert sum(batches) == 30
    starts = [c for c in commits if any(m is not None for _, m in c.values())]
    assert len(starts) == len(batches)  # every start is counted before its batch is handled
    assert len(commits) <= len(batches) + 2  # not two per batch
    last = {tp: o for c in commits for tp, (o, m) in c.items() if m is None}
    assert max(last.values()) == 30
    probe = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=group)
    await probe.start()
    try:
        partitions = {tp for c in commits for tp in c}
        assert sum([await probe.committed(tp) or 0 for tp in partitions]) == 30
    finally:
        await probe.stop()
