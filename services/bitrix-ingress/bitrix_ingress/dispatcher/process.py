"""bitrix-dispatcher: wa-to-b24 events → Bitrix24 Open Lines, within each portal's REST limit. Wiring only.

The consumer hands over a whole poll batch; batch_handler.py handles it in three phases (prepare, deliver
per portal, record each request's events before the next request). A redelivered event is found by
CheckProcessed and not sent again; one whose recording failed carries its "sent" effect into the retry,
which only records. Bitrix24 has no idempotency key for imconnector.send.messages, so the one window left
is a crash between sending a request and recording its events: that request's messages are sent twice.

Beside the consumer run the offline-event reconciler (offline_events.py): operator messages whose Bitrix24
event never reached the web, drained from each portal's offline queue into the b24-to-wa topic; and the
history consumer (history.py): the coexistence history import from its own topic, wa-history, with its own
consumer group and small batches, so that it never delays live traffic (it shares the portals' REST pacers,
where its calls yield to live ones).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from functools import partial

from zaptrix.clients import Clients
from zaptrix.dispatcher_process import Wire, dispatcher_main
from zaptrix.kafka import EventConsumer, EventProducer, Flow, topics_for
from zaptrix.logging import get_logger
from zaptrix.retrying import until_stopped
from zaptrix.settings import KafkaSettings

from bitrix_ingress.bitrix_rest.client import quiet_http_client_logs
from bitrix_ingress.bitrix_rest.egress import portal_rest
from bitrix_ingress.bitrix_rest.pacing import PacerRegistry
from bitrix_ingress.bitrix_rest.portal import PortalClient
from bitrix_ingress.deps import Deps
from bitrix_ingress.dispatcher.batch_handler import BitrixDispatcher
from bitrix_ingress.dispatcher.dead_letters import CustomerDeadLetters
from bitrix_ingress.dispatcher.offline_events import OfflineEvents
from bitrix_ingress.settings import DispatcherSettings

log = get_logger(__name__)
SERVICE = "bitrix-dispatcher"

__all__ = ["SERVICE", "BitrixDispatcher", "main", "wire"]


def wire(settings: DispatcherSettings, kafka: KafkaSettings) -> Wire:
    """The bitrix dispatcher's consumer around the started producer; its REST client closed on exit."""

    @contextlib.asynccontextmanager
    async def consumer(clients: Clients, producer: EventProducer) -> AsyncIterator[EventConsumer]:
        rest = portal_rest(settings, timeout_s=settings.bitrix_rest_timeout_s)
        reconciler: asyncio.Task[None] | None = None
        history: asyncio.Task[None] | None = None
        stop_history = asyncio.Event()
        try:
            deps = Deps(clients)
            portals = PortalClient(
                deps,
                rest,
                PacerRegistry(settings.rate_for),
                settings,
                attempts=settings.bitrix_rest_attempts,
                rate_limit_max_wait_s=settings.bitrix_rate_limit_max_wait_s,
                overload_wait_s=settings.bitrix_overload_wait_s,
            )
            topics = topics_for(Flow.WA_TO_B24, kafka.topic_prefix)
            offline = OfflineEvents(
                settings, deps, portals, producer, topics_for(Flow.B24_TO_WA, kafka.topic_prefix).main
            )
            stop_offline = asyncio.Event()
            reconciler = asyncio.create_task(offline.run(stop_offline), name="offline-events")
            if settings.history_import:
                history_consumer = history_consumer_for(settings, kafka, deps, portals, producer)
                restarts = until_stopped(stop_history, "history consumer stopped with an error, restarting")
                history = asyncio.create_task(restarts(history_consumer.run, stop_history), name="history")
            yield EventConsumer(
                kafka,
                topics,
                settings.consumer_group,
                BitrixDispatcher(settings, deps, portals).handle,
                producer,
                client_id=SERVICE,
                max_attempts=settings.max_attempts,
                retry_base_s=settings.retry_base_s,
                on_dead_letter=CustomerDeadLetters(deps, producer, topics.main),
                catch_up_records=settings.consumer_catch_up_records,
            )
        finally:
            stop_history.set()
            if history is not None:
                await asyncio.gather(history, return_exceptions=True)
            if reconciler is not None:
                stop_offline.set()
                await asyncio.gather(reconciler, return_exceptions=True)
            await rest.aclose()

    return consumer


def history_consumer_for(
    settings: DispatcherSettings,
    kafka: KafkaSettings,
    deps: Deps,
    portals: PortalClient,
    producer: EventProducer,
) -> EventConsumer:
    """The history import's consumer: its own topic and group, small batches, the same portal pacers, where
    its calls are background calls (they yield to live traffic)."""
    small = kafka.model_copy(update={"consumer_max_records": settings.history_max_records})
    portals = replace(portals, background=True)  # same deps, REST client and pacers; its own token cache
    return EventConsumer(
        small,
        topics_for(Flow.WA_HISTORY, kafka.topic_prefix),
        settings.history_consumer_group,
        BitrixDispatcher(settings, deps, portals).handle,
        producer,
        client_id=f"{SERVICE}-history",
        max_attempts=settings.max_attempts,
        retry_base_s=settings.retry_base_s,
        catch_up_records=settings.history_max_records,
    )


def main() -> None:
    settings = DispatcherSettings()
    dispatcher_main(
        SERVICE,
        settings.log_level,
        settings.metrics_port,
        partial(wire, settings),
        quiet_http_client_logs,
    )


if __name__ == "__main__":
    main()
