"""Kafka producers that come up even while Kafka is unreachable: both processes keep retrying the start
(0.5 s doubling up to 10 s) instead of crashing; the web answers 503 meanwhile, so Meta retries."""

from __future__ import annotations

import asyncio

from zaptrix.kafka import EventProducer
from zaptrix.logging import get_logger
from zaptrix.settings import KafkaSettings

log = get_logger(__name__)


async def connect_producer(
    settings: KafkaSettings, client_id: str, stopped: asyncio.Event | None = None
) -> EventProducer | None:
    """A started producer, retrying until Kafka answers; None when ``stopped`` is set first."""
    stopped = stopped or asyncio.Event()
    delay = 0.5
    while not stopped.is_set():
        producer = EventProducer(settings, client_id=client_id)
        try:
            await producer.start()
        except Exception as exc:
            log.warning("Kafka not reachable yet, retrying", error=repr(exc), delay_s=delay)
            try:
                await producer.stop()
            except Exception:  # noqa: S110 - a half-started producer may not stop cleanly
                pass
            try:
                await asyncio.wait_for(stopped.wait(), timeout=delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, 10.0)
            continue
        log.info("Kafka producer started", bootstrap=settings.bootstrap_servers)
        return producer
    return None


class ProducerHolder:
    """Starts the producer in the background: the web process comes up (and answers 503, so Meta retries)
    even while Kafka is unreachable."""

    def __init__(self, settings: KafkaSettings, client_id: str) -> None:
        self.settings = settings
        self.client_id = client_id
        self.producer: EventProducer | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        self.producer = await connect_producer(self.settings, self.client_id)

    async def healthy(self) -> bool:
        return self.producer is not None and await self.producer.healthy()

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.producer is not None:
            await self.producer.stop()
