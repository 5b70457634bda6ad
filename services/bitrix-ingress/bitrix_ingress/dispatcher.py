"""bitrix-dispatcher: wa-to-b24 events -> Bitrix24 Open Lines, within each portal's REST limit.

The consumer hands over a whole poll batch (a BatchHandler, not per_event); batch_handler handles it in
three phases: prepare, deliver per portal, record. This module wires the process together.

Idempotency: a redelivered event is found by CheckProcessed and not sent again (its bookkeeping is
redone from the recorded result, which is idempotent). Bitrix24 has no idempotency key for
imconnector.send.messages, so the one window left is between Bitrix24's answer and RecordDelivery
(one gRPC call, retried in place): a crash exactly there sends that message twice. The modules are
mapped in docs/bitrix-ingress.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

from zaptrix.clients import Clients
from zaptrix.health import grpc_health_check
from zaptrix.kafka import EventConsumer, EventProducer, Flow, topics_for
from zaptrix.logging import configure_logging, get_logger
from zaptrix.opsserver import serve_ops
from zaptrix.settings import GrpcClientSettings, KafkaSettings
from zaptrix.telemetry import setup_telemetry, shutdown_telemetry

from bitrix_ingress.batch_handler import BitrixDispatcher
from bitrix_ingress.dead_letters import CustomerDeadLetters
from bitrix_ingress.deps import Deps
from bitrix_ingress.pacing import PacerRegistry
from bitrix_ingress.portal import PortalClient
from bitrix_ingress.portal_egress import portal_rest
from bitrix_ingress.rest import quiet_http_client_logs
from bitrix_ingress.settings import DispatcherSettings

log = get_logger(__name__)
SERVICE = "bitrix-dispatcher"

__all__ = ["SERVICE", "BitrixDispatcher", "main", "run"]


async def run(
    settings: DispatcherSettings,
    kafka: KafkaSettings,
    grpc_settings: GrpcClientSettings,
    stopped: asyncio.Event | None = None,
) -> None:
    stopped = stopped or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stopped.set)
    clients = Clients(grpc_settings)
    deps = Deps(clients)
    rest = portal_rest(settings, timeout_s=settings.bitrix_rest_timeout_s)
    portals = PortalClient(
        deps,
        rest,
        PacerRegistry(settings.rate_for),
        settings,
        attempts=settings.bitrix_rest_attempts,
        rate_limit_max_wait_s=settings.bitrix_rate_limit_max_wait_s,
    )
    dispatcher = BitrixDispatcher(settings, deps, portals)
    topics = topics_for(Flow.WA_TO_B24, kafka.topic_prefix)
    producer = EventProducer(kafka, client_id=SERVICE)
    consumer = EventConsumer(
        kafka,
        topics,
        settings.consumer_group,
        dispatcher.handle,
        producer,
        client_id=SERVICE,
        max_attempts=settings.max_attempts,
        retry_base_s=settings.retry_base_s,
    )
    consumer.on_dead_letter = CustomerDeadLetters(deps, lambda: consumer.producer, topics.main)

    async def consumer_up() -> bool:
        return consumer.healthy()

    ops = await serve_ops(
        settings.dispatcher_metrics_port,
        SERVICE,
        {
            "consumer": consumer_up,
            "kafka": producer.healthy,
            "token_keeper": grpc_health_check(clients.token_keeper_channel),
            "mapper": grpc_health_check(clients.mapper_channel),
        },
    )
    log.info("dispatcher starting", topics=topics.all(), group=settings.consumer_group)
    delay = 0.5
    try:
        while not stopped.is_set():
            try:
                await producer.start()
                break
            except Exception as exc:
                log.warning("kafka producer cannot start yet", error=repr(exc), retry_s=delay)
                await producer.stop()
                producer = EventProducer(kafka, client_id=SERVICE)
                consumer.producer = producer
                await _sleep_or_stop(stopped, delay)
                delay = min(delay * 2, 10.0)
        delay = 0.5
        while not stopped.is_set():
            try:
                await consumer.run(stopped)
            except Exception as exc:
                log.exception("consumer stopped with an error, restarting", error=repr(exc))
                await _sleep_or_stop(stopped, delay)
                delay = min(delay * 2, 10.0)
    finally:
        ops.close()
        await producer.stop()
        await rest.aclose()
        await clients.close()
        log.info("dispatcher stopped")


async def _sleep_or_stop(stopped: asyncio.Event, delay: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopped.wait(), timeout=delay)


def main() -> None:
    settings = DispatcherSettings()
    configure_logging(SERVICE, settings.log_level)
    quiet_http_client_logs()
    setup_telemetry(SERVICE)
    try:
        try:
            import uvloop

            uvloop.run(run(settings, KafkaSettings(), GrpcClientSettings()))
        except ImportError:
            asyncio.run(run(settings, KafkaSettings(), GrpcClientSettings()))
    finally:
        shutdown_telemetry()


if __name__ == "__main__":
    main()
