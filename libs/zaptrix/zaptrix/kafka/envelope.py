"""Envelope codec: protobuf value, conversation key, and headers carrying W3C trace context.

Headers: traceparent/tracestate (W3C, written by the global propagator), zaptrix-event-type,
zaptrix-schema-version, zaptrix-event-id. Retry and dead-letter bookkeeping headers are defined here too.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter

from zaptrix.v1 import events_pb2

SCHEMA_VERSION = "1"
H_EVENT_TYPE = "zaptrix-event-type"
H_SCHEMA = "zaptrix-schema-version"
H_EVENT_ID = "zaptrix-event-id"
H_ATTEMPT = "zaptrix-attempt"
H_NOT_BEFORE = "zaptrix-not-before"  # epoch milliseconds
H_DLQ_REASON = "zaptrix-dlq-reason"
H_DLQ_SOURCE = "zaptrix-dlq-source-topic"
H_DLQ_AT = "zaptrix-dlq-at"
H_EFFECTS = "zaptrix-effects"  # effects.py
H_SEQ = "zaptrix-seq"  # holds.py: the record's offset in the main topic, its place in the conversation
BOOKKEEPING = frozenset({H_ATTEMPT, H_NOT_BEFORE, H_DLQ_REASON, H_DLQ_SOURCE, H_DLQ_AT, H_EFFECTS, H_SEQ})

Headers = list[tuple[str, bytes]]


class EnvelopeError(ValueError):
    """A record that is not a valid envelope of a schema version we understand."""


class _HeaderSetter(Setter[Headers]):
    def set(self, carrier: Headers, key: str, value: str) -> None:
        carrier.append((key, value.encode()))


class _HeaderGetter(Getter[Sequence[tuple[str, bytes]]]):
    def get(self, carrier: Sequence[tuple[str, bytes]], key: str) -> list[str] | None:
        values = [v.decode(errors="replace") for k, v in carrier if k == key]
        return values or None

    def keys(self, carrier: Sequence[tuple[str, bytes]]) -> list[str]:
        return [k for k, _ in carrier]


_SETTER = _HeaderSetter()
_GETTER = _HeaderGetter()


def new_envelope(
    event_id: str,
    conversation_key: str,
    source: events_pb2.Platform.ValueType,
    occurred_at: datetime | None = None,
    **kind: Any,
) -> events_pb2.Envelope:
    """Build an envelope; pass exactly one event kind as a keyword (e.g. customer_message=...)."""
    if len(kind) != 1:
        raise ValueError("exactly one event kind is required")
    env = events_pb2.Envelope(event_id=event_id, conversation_key=conversation_key, source=source, **kind)
    env.occurred_at.FromDatetime(occurred_at or datetime.now(UTC))
    return env


def event_type(env: events_pb2.Envelope) -> str:
    return env.WhichOneof("kind") or "unknown"


def header(headers: Iterable[tuple[str, bytes]], key: str) -> str | None:
    for k, v in headers:
        if k == key:
            return v.decode(errors="replace")
    return None


def encode(env: events_pb2.Envelope, context: Context | None = None) -> tuple[bytes, bytes, Headers]:
    """Returns (key, value, headers); the trace context of `context` (default: current) goes in the headers."""
    if not env.event_id or not env.conversation_key or env.WhichOneof("kind") is None:
        raise EnvelopeError("an envelope needs event_id, conversation_key and an event kind")
    headers: Headers = [
        (H_EVENT_TYPE, event_type(env).encode()),
        (H_SCHEMA, SCHEMA_VERSION.encode()),
        (H_EVENT_ID, env.event_id.encode()),
    ]
    propagate.inject(headers, context=context, setter=_SETTER)
    return env.conversation_key.encode(), env.SerializeToString(), headers


def decode(value: bytes | None, headers: Sequence[tuple[str, bytes]]) -> events_pb2.Envelope:
    version = header(headers, H_SCHEMA)
    if version is not None and version != SCHEMA_VERSION:
        raise EnvelopeError(f"unsupported schema version {version!r}")
    if not value:
        raise EnvelopeError("empty record value")
    env = events_pb2.Envelope()
    try:
        env.ParseFromString(value)
    except DecodeError as exc:
        raise EnvelopeError(f"not a zaptrix.v1.Envelope: {exc}") from exc
    if not env.event_id or env.WhichOneof("kind") is None:
        raise EnvelopeError("envelope without event_id or event kind")
    return env


def extract_context(headers: Sequence[tuple[str, bytes]]) -> Context:
    """The producer's trace context (W3C traceparent/tracestate) from record headers."""
    return propagate.extract(headers, getter=_GETTER)


def without_bookkeeping(headers: Sequence[tuple[str, bytes]]) -> Headers:
    return [(k, v) for k, v in headers if k not in BOOKKEEPING]


def now_ms() -> int:
    return int(time.time() * 1000)
