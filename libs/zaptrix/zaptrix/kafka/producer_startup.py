"""Producers that come up even while Kafka is unreachable: every process keeps retrying the start (0.5 s
doubling up to 10 s) instead of crashing. Meanwhile a web process is not ready and answers 503 (the
platform retries), and a dispatcher reports kafka down on /health."""

from __future__ import annotations

import asyncio
import contextlib

from zaptrix.kafka.producer import EventProducer
from zaptrix.logging import get_logger
from zaptrix.retrying import until_stopped
from zaptrix.settings import KafkaSettings

log = get_logger(__name__)


async def start_producer(
    settings: KafkaSettings, client_id: str, stopped: asyncio.Event | None = None
) -> EventProducer | None:
    """A started producer, retrying until Kafka answers; None when ``stopped`` is set first."""
    stopped = stopped or asyncio.Event()

    async def attempt() -> EventProducer | None:
        return None if stopped.is_set() else await _start_once(settings, client_id)

    retrying = until_stopped(stopped, "Kafka not reachable yet, retrying", client_id=client_id)
    producer: EventProducer | None = await retrying(attempt)
    if producer is not None:
        log.info("Kafka producer started", bootstrap=settings.bootstrap_servers, client_id=client_id)
    return producer


async def _start_once(settings: KafkaSettings, client_id: str) -> EventProducer:
    producer = EventProducer(settings, client_id=client_id)
    try:
        await producer.start()
    except Exception:
        with contextlib.suppress(Exception):  # a half-started producer may not stop cleanly
            await producer.stop()
        raise
    return producer


class BackgroundProducer:
    """A web process's producer, started in the background: the process comes up (and answers 503, so the
    platform retries) even while Kafka is unreachable. ``producer`` is None until Kafka has answered."""

    def __init__(self, settings: KafkaSettings, client_id: str) -> None:
        self._settings = settings
        self._client_id = client_id
        self._stopped = asyncio.Event()
        self._task: asyncio.Task[EventProducer | None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            start_producer(self._settings, self._client_id, self._stopped)
        )

    @property
    def producer(self) -> EventProducer | None:
        task = self._task
        if task is None or not task.done() or task.cancelled() or task.exception() is not None:
            return None
        return task.result()

    async def unwedged(self) -> bool:
        """The web process's liveness: false only once its started producer is wedged (aiokafka's
        background tasks ended, zaptrix.kafka.wedges): it can hand off nothing more until restarted."""
        producer = self.producer
        return producer is None or not producer.wedged()

    async def started(self) -> bool:
        """The web process's readiness: Kafka has answered once, so events can be handed off durably. A
        later broker outage does not undo it: every replica shares that outage, and an unready pod would
        turn Bitrix24 events (never resent) into ingress 503s recorded nowhere instead of counted ones."""
        return self.producer is not None

    async def healthy(self) -> bool:
        producer = self.producer
        return producer is not None and await producer.healthy()

    async def stop(self) -> None:
        self._stopped.set()
        if self._task is not None:
            if not self._task.done():
                self._task.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._task
        producer = self.producer
        if producer is not None:
            await producer.stop()


__all__ = ["BackgroundProducer", "start_producer"]
