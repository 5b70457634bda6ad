"""EventProducer.publish: one PRODUCER span per call, its context in every record's headers (so each
message's trace continues from it), and an error span when Kafka refuses."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from zaptrix.kafka.envelope import extract_context, new_envelope
from zaptrix.kafka.producer import EventProducer, PublishError
from zaptrix.settings import KafkaSettings
from zaptrix.v1 import events_pb2


class _FakeSend:
    """EventProducer._send (a record's way to Kafka) that keeps the records: these tests are about spans."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[dict[str, Any]] = []
        self.fail = fail

    async def __call__(self, topic: str, key: bytes, value: bytes, headers: Any) -> asyncio.Future[object]:
        self.sent.append({"key": key, "value": value, "headers": headers})
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if self.fail:
            fut.set_exception(KafkaTimeoutError())
        else:
            fut.set_result(None)
        return fut


def _producer(fake: _FakeSend) -> EventProducer:
    producer = EventProducer(KafkaSettings(), "test")
    producer._send = fake  # type: ignore[method-assign]
    return producer


def _event(n: int) -> events_pb2.Envelope:
    return new_envelope(
        f"wa:wamid.{n}",
        "100:4915",
        events_pb2.PLATFORM_WHATSAPP,
        customer_message=events_pb2.CustomerMessage(wamid=f"wamid.{n}", text=f"message {n}"),
    )


async def test_one_producer_span_per_publish_whose_context_every_record_carries(
    spans: InMemorySpanExporter,
) -> None:
    fake = _FakeSend()
    with trace.get_tracer("test").start_as_current_span("POST /webhooks/meta", kind=SpanKind.SERVER) as root:
        await _producer(fake).publish("t", [_event(1), _event(2), _event(3)])
    (publish,) = [s for s in spans.get_finished_spans() if s.kind == SpanKind.PRODUCER]
    assert publish.name == "t publish"
    assert publish.parent is not None and publish.parent.span_id == root.get_span_context().span_id
    assert publish.attributes is not None and publish.attributes["messaging.batch.message_count"] == 3
    assert len(fake.sent) == 3
    for record in fake.sent:
        parent = trace.get_current_span(extract_context(record["headers"])).get_span_context()
        assert (parent.trace_id, parent.span_id) == (publish.context.trace_id, publish.context.span_id)


async def test_a_single_event_publish_names_the_message(spans: InMemorySpanExporter) -> None:
    await _producer(_FakeSend()).publish("t", [_event(7)])
    (publish,) = [s for s in spans.get_finished_spans() if s.kind == SpanKind.PRODUCER]
    assert publish.attributes is not None
    assert publish.attributes["messaging.message.id"] == "wa:wamid.7"
    assert publish.attributes["zaptrix.event_type"] == "customer_message"


async def test_a_refused_publish_raises_and_marks_its_span(spans: InMemorySpanExporter) -> None:
    with pytest.raises(PublishError):
        await _producer(_FakeSend(fail=True)).publish("t", [_event(1), _event(2)])
    (publish,) = [s for s in spans.get_finished_spans() if s.kind == SpanKind.PRODUCER]
    assert publish.status.status_code == StatusCode.ERROR


class _SilentSend(_FakeSend):
    """Takes the records, never acknowledges them (a broker that stopped answering)."""

    async def __call__(self, topic: str, key: bytes, value: bytes, headers: Any) -> asyncio.Future[object]:
        self.sent.append({"key": key, "value": value, "headers": headers})
        return asyncio.get_running_loop().create_future()


async def test_a_publish_past_its_deadline_raises_in_time_and_marks_its_span(
    spans: InMemorySpanExporter,
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(PublishError):
        await _producer(_SilentSend()).publish("t", [_event(1)], deadline=started + 0.2)
    assert 0.15 < loop.time() - started < 1.0  # the caller's deadline, not twice the request timeout
    (publish,) = [s for s in spans.get_finished_spans() if s.kind == SpanKind.PRODUCER]
    assert publish.status.status_code == StatusCode.ERROR


async def test_publish_raw_keeps_the_callers_deadline() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(PublishError):
        await _producer(_SilentSend()).publish_raw("t", b"k", b"v", [], deadline=started + 0.2)
    assert 0.15 < loop.time() - started < 1.0


async def test_inside_the_callers_span_no_producer_span_and_the_records_carry_the_callers_context(
    spans: InMemorySpanExporter,
) -> None:
    """A webhook's publish (own_span=False): one span per webhook; the records continue its trace."""
    fake = _FakeSend()
    with trace.get_tracer("test").start_as_current_span("POST /webhooks/meta", kind=SpanKind.SERVER) as root:
        await _producer(fake).publish("t", [_event(1), _event(2)], own_span=False)
    assert [s.kind for s in spans.get_finished_spans()] == [SpanKind.SERVER]
    for record in fake.sent:
        parent = trace.get_current_span(extract_context(record["headers"])).get_span_context()
        assert (parent.trace_id, parent.span_id) == (
            root.get_span_context().trace_id,
            root.get_span_context().span_id,
        )


async def test_inside_the_callers_span_a_refusal_is_an_event_of_that_span(
    spans: InMemorySpanExporter,
) -> None:
    server_span = trace.get_tracer("test").start_as_current_span(
        "POST /webhooks/meta", kind=SpanKind.SERVER, record_exception=False, set_status_on_exception=False
    )
    with server_span:
        with pytest.raises(PublishError):
            await _producer(_FakeSend(fail=True)).publish("t", [_event(1)], own_span=False)
    (server,) = spans.get_finished_spans()
    (refused,) = [e for e in server.events if e.name == "publish refused"]
    assert refused.attributes is not None
    assert refused.attributes["messaging.destination.name"] == "t"
    assert refused.attributes["error.type"] == "KafkaTimeoutError"
