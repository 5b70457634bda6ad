"""The dispatcher process both adapters run; each adapter only wires its consumer (``Wire``).

SIGTERM/SIGINT stop it. The ops server (/health, /ready, /metrics) is up from the start and reports four
checks: consumer, kafka, mapper, token_keeper. /ready is the consumer polling (the pod's own work; a
dispatcher has no Service, so readiness only paces rollouts); /health fails only when the consumer runs but
has stopped polling (wedged): a process waiting for Kafka or its gRPC dependencies is alive, and restarting
it would not bring them back. The producer is started while Kafka may still be down
(producer_startup); then the adapter wires its consumer around the started producer, and the consumer
runs, restarted with backoff when it fails (offsets are committed per batch, so a restart loses nothing).
On the way out the adapter's resources close first, then the ops server, the producer and the gRPC clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from zaptrix.clients import Clients
from zaptrix.health import grpc_health_check
from zaptrix.kafka import EventConsumer, EventProducer
from zaptrix.kafka.producer_startup import start_producer
from zaptrix.logging import get_logger
from zaptrix.opsserver import serve_ops
from zaptrix.process import run_async, run_process, tune_gc_for_serving
from zaptrix.retrying import until_stopped
from zaptrix.settings import GrpcClientSettings, KafkaSettings, MetricsSettings

log = get_logger(__name__)

# The adapter's part: given the gRPC clients and a started producer, its consumer (and, on exit, its
# own resources closed).
Wire = Callable[[Clients, EventProducer], AbstractAsyncContextManager[EventConsumer]]


async def run_dispatcher(
    service: str,
    ops_port: int,
    kafka: KafkaSettings,
    grpc_settings: GrpcClientSettings,
    wire: Wire,
    stopped: asyncio.Event | None = None,
) -> None:
    """Run until ``stopped`` is set (or SIGTERM/SIGINT)."""
    stopped = stopped or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on this platform / loop
            loop.add_signal_handler(sig, stopped.set)
    clients = Clients(grpc_settings)
    producer: EventProducer | None = None
    consumer: EventConsumer | None = None

    async def consumer_up() -> bool:
        return consumer is not None and consumer.healthy()

    async def kafka_up() -> bool:
        return producer is not None and await producer.healthy()

    async def not_wedged() -> bool:
        if producer is not None and producer.wedged():  # zaptrix.kafka.wedges
            return False
        return consumer is None or not consumer.running or consumer.healthy()

    ops = await serve_ops(
        ops_port,
        service,
        {
            "consumer": consumer_up,
            "kafka": kafka_up,
            "mapper": grpc_health_check(clients.mapper_channel),
            "token_keeper": grpc_health_check(clients.token_keeper_channel),
        },
        ready=consumer_up,
        live=not_wedged,
        host=MetricsSettings().metrics_bind_address,
    )
    try:
        producer = await start_producer(kafka, service, stopped)
        if producer is not None:
            async with wire(clients, producer) as consumer:
                log.info("dispatcher starting", topics=consumer.topics.all(), group=consumer.group_id)
                restarts = until_stopped(
                    stopped, "consumer stopped with an error, restarting", traceback=True
                )
                await restarts(consumer.run, stopped)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        ops.close()
        if producer is not None:
            await producer.stop()
        await clients.close()
        log.info("dispatcher stopped")


def dispatcher_main(
    service: str,
    log_level: str,
    ops_port: int,
    wire: Callable[[KafkaSettings], Wire],
    after_logging: Callable[[], None] | None = None,
) -> None:
    """A dispatcher's console-script main: run_dispatcher with the settings from the environment, the
    collector tuned as in a web process once everything is imported: a drained batch holds thousands of
    records' objects, and each full collection walked the whole startup heap beside them (backlog_drain:
    ~14 % of the bitrix dispatcher's CPU in the collector, a full collection of ~0.1 s every second)."""
    kafka = KafkaSettings()
    grpc_settings = GrpcClientSettings()

    def body() -> None:
        tune_gc_for_serving()
        run_async(lambda: run_dispatcher(service, ops_port, kafka, grpc_settings, wire(kafka)))

    run_process(service, log_level, body, after_logging)


__all__ = ["Wire", "dispatcher_main", "run_dispatcher"]
