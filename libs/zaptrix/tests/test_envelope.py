from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from zaptrix.kafka.envelope import (
    H_EVENT_ID,
    H_EVENT_TYPE,
    H_SCHEMA,
    EnvelopeError,
    decode,
    encode,
    extract_context,
    header,
    new_envelope,
)
from zaptrix.v1 import events_pb2


def _message() -> events_pb2.Envelope:
    return new_envelope(
        "wa:wamid.1",
        "100:4915",
        events_pb2.PLATFORM_WHATSAPP,
        customer_message=events_pb2.CustomerMessage(wamid="wamid.1", text="hi"),
    )


def test_round_trip_keeps_the_event_and_headers() -> None:
    key, value, headers = encode(_message())
    assert key == b"100:4915"
    assert header(headers, H_EVENT_TYPE) == "customer_message"
    assert header(headers, H_SCHEMA) == "1"
    assert header(headers, H_EVENT_ID) == "wa:wamid.1"
    env = decode(value, headers)
    assert env.customer_message.text == "hi"
    assert env.occurred_at.seconds > 0


def test_trace_context_travels_in_headers(spans: InMemorySpanExporter) -> None:
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("webhook") as span:
        _, _, headers = encode(_message())
        expected = span.get_span_context()
    traceparent = header(headers, "traceparent")
    assert traceparent is not None and format(expected.trace_id, "032x") in traceparent
    restored = trace.get_current_span(extract_context(headers)).get_span_context()
    assert restored.trace_id == expected.trace_id and restored.span_id == expected.span_id


@pytest.mark.parametrize(
    ("value", "headers", "reason"),
    [
        (b"", [], "empty"),
        (b"\xff\xff\xff", [], "not a zaptrix"),
        (events_pb2.Envelope(event_id="x").SerializeToString(), [], "without"),
        (b"x", [(H_SCHEMA, b"9")], "unsupported schema"),
    ],
)
def test_decode_rejects_what_it_cannot_read(
    value: bytes, headers: list[tuple[str, bytes]], reason: str
) -> None:
    with pytest.raises(EnvelopeError, match=reason):
        decode(value, headers)


def test_encode_requires_an_event_kind() -> None:
    with pytest.raises(EnvelopeError):
        encode(events_pb2.Envelope(event_id="x", conversation_key="k"))
    with pytest.raises(ValueError, match="exactly one"):
        new_envelope("x", "k", events_pb2.PLATFORM_WHATSAPP)
