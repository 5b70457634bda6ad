"""Idempotent producer (acks=all). publish() returns only once the broker has every record."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from zaptrix.kafka.connection import connection_kwargs
from zaptrix.kafka.envelope import Headers, encode, event_type
from zaptrix.metrics import EVENTS_PRODUCED
from zaptrix.settings import KafkaSettings
from zaptrix.v1 import events_pb2

tracer = trace.get_tracer("zaptrix.kafka")


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
            **connection_kwargs(settings),
        )
        self._started = False

    async def start(self) -> None:
        await self._producer.start()
        self._started = True

    async def stop(self) -> None:
        if self._started:
            await self._producer.stop()
            self._started = False

    async def publish(self, topic: str, envelopes: Sequence[events_pb2.Envelope]) -> None:
        """Send all envelopes (each with its own PRODUCER span), then wait for every acknowledgement."""
        futures = []
        try:
            for env in envelopes:
                with tracer.start_as_current_span(
                    f"{topic} publish",
                    kind=SpanKind.PRODUCER,
                    attributes={
                        "messaging.system": "kafka",
                        "messaging.operation.type": "send",
                        "messaging.destination.name": topic,
                        "messaging.message.id": env.event_id,
                        "messaging.kafka.message.key": env.conversation_key,
                        "zaptrix.event_type": event_type(env),
                    },
                ):
                    key, value, headers = encode(env)
                    futures.append(await self._producer.send(topic, value=value, key=key, headers=headers))
            await self._await_acks(futures)
        except (KafkaError, TimeoutError) as exc:
            raise PublishError(f"Kafka did not accept the events for {topic}: {exc!r}") from exc
        for env in envelopes:
            EVENTS_PRODUCED.labels(topic, event_type(env)).inc()

    async def publish_raw(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers
    ) -> tuple[int, int]:
        """Re-publish a record as is (retry, dead letter, replay); the headers already carry the trace.
        Returns where it landed: (partition, offset)."""
        try:
            fut = await self._producer.send(topic, value=value, key=key, headers=headers)
            await self._await_acks([fut])
        except (KafkaError, TimeoutError) as exc:
            raise PublishError(f"Kafka did not accept the record for {topic}: {exc!r}") from exc
        meta = fut.result()
        return int(meta.partition), int(meta.offset)

    async def _await_acks(self, futures: list[asyncio.Future[object]]) -> None:
        if futures:
            timeout = self.settings.request_timeout_ms / 1000 * 2
            await asyncio.wait_for(asyncio.gather(*futures), timeout=timeout)

    async def healthy(self, timeout_s: float = 2.0) -> bool:
        """True when a broker answers a metadata request now."""
        if not self._started:
            return False
        try:
            await asyncio.wait_for(self._producer.client.fetch_all_metadata(), timeout=timeout_s)
        except Exception:
            return False
        return True
