"""meta-dispatcher: routes each event of the b24-to-wa flow to its handler; the wiring and the process.
The order of an operator message's steps: docs/meta-ingress.md, "Dispatcher"."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from functools import partial

import httpx
from zaptrix.clients import Clients
from zaptrix.dispatcher_process import Wire, dispatcher_main
from zaptrix.kafka import (
    EventConsumer,
    EventProducer,
    Flow,
    Outcome,
    PermanentError,
    Received,
    per_event,
    topics_for,
)
from zaptrix.logging import get_logger
from zaptrix.settings import KafkaSettings

from meta_ingress.dispatcher.bitrix_files import BitrixFiles
from meta_ingress.dispatcher.context import Context
from meta_ingress.dispatcher.dead_letters import DeadLetterNotices
from meta_ingress.dispatcher.notices import Notifier
from meta_ingress.dispatcher.operator_events import OperatorEvents
from meta_ingress.dispatcher.operator_messages import OperatorMessages
from meta_ingress.dispatcher.portal_hosts import PortalHosts
from meta_ingress.dispatcher.window import Window
from meta_ingress.graph.client import GraphClient
from meta_ingress.settings import DispatcherSettings

SERVICE = "meta-dispatcher"
log = get_logger(__name__)


class MetaDispatcher:
    """Routes each event of the b24-to-wa flow to its handler."""

    def __init__(
        self,
        settings: DispatcherSettings,
        clients: Clients,
        graph: GraphClient,
        producer: EventProducer,
        out_topic: str,
        files_http: httpx.AsyncClient | None = None,
    ) -> None:
        self.ctx = Context(settings, clients, graph, Notifier(producer, out_topic))
        hosts = PortalHosts(clients, settings.file_host_allowlist)
        self.files = BitrixFiles(settings, graph, self.ctx.sender, files_http, hosts)
        self.window = Window(self.ctx)
        self.messages = OperatorMessages(self.ctx, self.window, self.files)
        self.others = OperatorEvents(self.ctx, self.messages)

    async def aclose(self) -> None:
        await self.files.aclose()

    async def handle(self, rec: Received) -> Outcome | None:
        env = rec.envelope
        kind = rec.event_type
        if kind == "operator_message":
            return await self.messages.on_message(rec, env.operator_message)
        if kind == "operator_message_edit":
            return await self.others.on_edit(rec, env.operator_message_edit)
        if kind == "operator_message_delete":
            return await self.others.on_delete(env, env.operator_message_delete)
        if kind == "operator_read":
            return await self.others.on_read(env, env.operator_read)
        if kind == "line_removed":
            return await self.others.on_line_removed(env)
        if kind == "window_closed":
            return await self.window.on_window_closed(rec, env.window_closed)
        if kind in ("template_status_update", "template_quality_update", "template_category_update"):
            return await self.messages.templates.on_update(rec)
        if kind == "template_sync_request":
            return await self.messages.templates.on_sync_request(env.template_sync_request)
        raise PermanentError(f"unexpected event type {kind} on the {Flow.B24_TO_WA} topic")


def wire(settings: DispatcherSettings, kafka: KafkaSettings) -> Wire:
    """The meta dispatcher's consumer around the started producer; its Graph and file clients closed on exit."""

    @contextlib.asynccontextmanager
    async def consumer(clients: Clients, producer: EventProducer) -> AsyncIterator[EventConsumer]:
        graph = GraphClient(settings)
        dispatcher: MetaDispatcher | None = None
        try:
            dispatcher = MetaDispatcher(
                settings, clients, graph, producer, topics_for(Flow.WA_TO_B24, kafka.topic_prefix).main
            )
            log.info("meta-dispatcher wired", graph=settings.graph_root)
            yield EventConsumer(
                kafka,
                topics_for(Flow.B24_TO_WA, kafka.topic_prefix),
                settings.consumer_group,
                per_event(dispatcher.handle, settings.dispatch_concurrency),
                producer,
                client_id=SERVICE,
                max_attempts=settings.max_attempts,
                retry_base_s=settings.retry_base_s,
                on_dead_letter=DeadLetterNotices(dispatcher.ctx),
            )
        finally:
            if dispatcher is not None:
                await dispatcher.aclose()
            await graph.aclose()

    return consumer


def main() -> None:
    settings = DispatcherSettings()
    dispatcher_main(SERVICE, settings.log_level, settings.metrics_port, partial(wire, settings))


__all__ = ["MetaDispatcher", "main", "wire"]
