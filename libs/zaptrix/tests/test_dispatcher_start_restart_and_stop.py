"""The process skeleton under both dispatchers: Kafka down at start-up, a failing consumer, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx
import structlog
from zaptrix.clients import Clients
from zaptrix.dispatcher_process import run_dispatcher
from zaptrix.kafka import EventConsumer, EventProducer
from zaptrix.kafka.producer_startup import BackgroundProducer, start_producer
from zaptrix.settings import GrpcClientSettings, KafkaSettings
from zaptrix_testing.ports import free_port


def _nowhere() -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", request_timeout_ms=1000)


async def test_start_producer_keeps_trying_while_kafka_is_down_and_gives_up_on_stop() -> None:
    stopped = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(start_producer(_nowhere(), "test", stopped))
        while not any(e["event"] == "Kafka not reachable yet, retrying" for e in logs):
            await asyncio.sleep(0.05)
        stopped.set()
        assert await task is None
    assert all(e["log_level"] == "warning" for e in logs if e["event"].startswith("Kafka not reachable"))


async def test_start_producer_returns_a_started_producer(kafka_bootstrap: str) -> None:
    producer = await start_producer(KafkaSettings(bootstrap_servers=kafka_bootstrap), "test")
    assert producer is not None
    try:
        assert await producer.healthy()
    finally:
        await producer.stop()


async def test_background_producer_is_none_until_kafka_answers_and_stops_while_down() -> None:
    background = BackgroundProducer(_nowhere(), "test")
    background.start()
    await asyncio.sleep(0.2)
    assert background.producer is None and not await background.healthy()
    await background.stop()
    assert background.producer is None


async def test_background_producer_comes_up(kafka_bootstrap: str) -> None:
    background = BackgroundProducer(KafkaSettings(bootstrap_servers=kafka_bootstrap), "test")
    background.start()
    try:
        for _ in range(600):
            if background.producer is not None:
                break
            await asyncio.sleep(0.05)
        assert await background.healthy()
    finally:
        await background.stop()


class _FlakyConsumer:
    """Fails its first run, as a consumer does when Kafka goes away mid-run; then runs until stopped."""

    def __init__(self) -> None:
        self.runs = 0
        self.topics = type("T", (), {"all": lambda self: ["t.main"]})()
        self.group_id = "g"
        self.started = asyncio.Event()
        self.running = False

    def healthy(self) -> bool:
        return self.running

    async def run(self, stopped: asyncio.Event) -> None:
        self.runs += 1
        if self.runs == 1:
            raise RuntimeError("broker went away")
        self.running = True
        self.started.set()
        await stopped.wait()
        self.running = False


async def test_the_dispatcher_restarts_a_failed_consumer_and_closes_everything(kafka_bootstrap: str) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:8]}")
    port = free_port()
    consumer = _FlakyConsumer()
    seen: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def wire(clients: Clients, producer: EventProducer) -> AsyncIterator[EventConsumer]:
        seen["producer"] = producer
        try:
            yield cast(EventConsumer, consumer)
        finally:
            seen["closed"] = True

    stopped = asyncio.Event()
    task = asyncio.create_task(
        run_dispatcher("test-dispatcher", port, kafka, GrpcClientSettings(), wire, stopped)
    )
    await asyncio.wait_for(consumer.started.wait(), timeout=60)
    async with httpx.AsyncClient() as http:
        health = (await http.get(f"http://127.0.0.1:{port}/health")).json()
    assert health["dependencies"]["consumer"] == "up" and health["dependencies"]["kafka"] == "up"
    stopped.set()
    await asyncio.wait_for(task, timeout=60)
    assert consumer.runs == 2  # restarted once after the failure
    assert seen["closed"] is True
    assert not await seen["producer"].healthy()  # stopped with the process
    assert set(health["dependencies"]) == {"consumer", "kafka", "mapper", "token_keeper"}


async def test_the_dispatcher_stops_while_kafka_is_still_down() -> None:
    wired = False

    @contextlib.asynccontextmanager
    async def wire(clients: Clients, producer: EventProducer) -> AsyncIterator[EventConsumer]:
        nonlocal wired
        wired = True
        yield cast(EventConsumer, None)

    stopped = asyncio.Event()
    task = asyncio.create_task(
        run_dispatcher("test-dispatcher", free_port(), _nowhere(), GrpcClientSettings(), wire, stopped)
    )
    await asyncio.sleep(0.3)
    stopped.set()
    await asyncio.wait_for(task, timeout=30)
    assert not wired


async def test_a_dispatcher_whose_mapper_and_token_keeper_are_down_stays_ready_and_alive(
    kafka_bootstrap: str,
) -> None:
    """Readiness is the pod's own state (its consumer polls), not its dependencies': the mapper and
    token-keeper being unreachable shows in /health and zaptrix_dependency_up, and both probes answer 200."""
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:8]}")
    port = free_port()
    consumer = _FlakyConsumer()
    consumer.runs = 1  # no failure first: runs until stopped

    @contextlib.asynccontextmanager
    async def wire(clients: Clients, producer: EventProducer) -> AsyncIterator[EventConsumer]:
        yield cast(EventConsumer, consumer)

    dead = GrpcClientSettings(
        mapper_addr=f"127.0.0.1:{free_port()}", token_keeper_addr=f"127.0.0.1:{free_port()}"
    )
    stopped = asyncio.Event()
    task = asyncio.create_task(run_dispatcher("test-dispatcher", port, kafka, dead, wire, stopped))
    try:
        await asyncio.wait_for(consumer.started.wait(), timeout=60)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            ready, health = await http.get("/ready"), await http.get("/health")
            metrics = await http.get("/metrics")
    finally:
        stopped.set()
        await asyncio.wait_for(task, timeout=60)
    assert ready.status_code == 200, ready.text
    assert health.status_code == 200
    doc = health.json()
    assert doc["dependencies"] == {"consumer": "up", "kafka": "up", "mapper": "down", "token_keeper": "down"}
    assert doc["status"] == "degraded" and doc["ready"] is True
    assert 'zaptrix_dependency_up{dependency="mapper"} 0.0' in metrics.text
    assert 'zaptrix_dependency_up{dependency="kafka"} 1.0' in metrics.text


async def test_a_dispatcher_waiting_for_kafka_is_alive_but_not_ready() -> None:
    """Liveness restarts a wedged consumer, not a process that is waiting for Kafka to come back: a
    restart would not bring Kafka back, only crash-loop the pods through an outage."""
    port = free_port()

    @contextlib.asynccontextmanager
    async def wire(clients: Clients, producer: EventProducer) -> AsyncIterator[EventConsumer]:
        yield cast(EventConsumer, None)

    stopped = asyncio.Event()
    task = asyncio.create_task(
        run_dispatcher("test-dispatcher", port, _nowhere(), GrpcClientSettings(), wire, stopped)
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(100):
                with contextlib.suppress(httpx.TransportError):
                    health, ready = await http.get("/health"), await http.get("/ready")
                    break
                await asyncio.sleep(0.05)
    finally:
        stopped.set()
        await asyncio.wait_for(task, timeout=30)
    assert health.status_code == 200, health.text
    assert health.json()["dependencies"]["kafka"] == "down"
    assert ready.status_code == 503 and ready.json()["ready"] is False
