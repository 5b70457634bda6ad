"""Kafka: topics, the protobuf envelope codec with W3C trace context, producer, consumer, retry/DLQ."""

from zaptrix.errors import PermanentError, TransientError
from zaptrix.kafka.consumer import EventConsumer, Outcome, Received, per_event
from zaptrix.kafka.envelope import decode, encode, event_type, new_envelope
from zaptrix.kafka.producer import EventProducer, PublishError
from zaptrix.kafka.topics import Flow, FlowTopics, topics_for

__all__ = [
    "EventConsumer",
    "EventProducer",
    "Flow",
    "FlowTopics",
    "Outcome",
    "PermanentError",
    "PublishError",
    "Received",
    "TransientError",
    "decode",
    "encode",
    "event_type",
    "new_envelope",
    "per_event",
    "topics_for",
]
