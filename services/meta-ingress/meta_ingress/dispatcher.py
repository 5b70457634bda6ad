"""meta-dispatcher: operator events (Kafka, Flow.B24_TO_WA) → WhatsApp Graph API. Wiring and the process.

Per OperatorMessage (operator_messages.py), in this order:
1. dedupe: CheckProcessed(event_id) → already done: nothing happens (duplicate);
2. conversation by (event member_id, external_chat_id) (mapper), channel binding (mapper, cached); the
   event, the conversation and the binding must name one portal (else dead letter "cross-tenant", nothing
   sent, no notice); then credentials (token-keeper, cached) (context.py, records.py);
3. plan: BB-code → WhatsApp text, chunks, files by media type, reply context (outbound.py);
4. 24-h window (window.py): a conversation whose last customer message is known to be older than 24 h
   gets no plain send: the operator is told at once (SendFailure, notices.py) and the channel's
   re-engagement template is sent where configured. Meta's 131047 (synchronous, or later as a failed
   status) stays the last word;
5. send each part, paced per phone number and per customer (sender.py; files: bitrix_files.py);
6. LinkMessage(wamid ↔ member_id + bitrix_message_id, OUTBOUND), then MarkProcessed(event_id, wamids).
   The consumer commits the offset after the handler returns.

WindowClosed (window.py; Meta reported 131047 after accepting a send, produced by the web part): the
channel's re-engagement template is sent under the same per-conversation cooldown, and the operator told.
Edits, deletes, reads and removed lines: operator_events.py. See docs/meta-ingress.md.
"""

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

from meta_ingress.bitrix_files import BitrixFiles
from meta_ingress.context import Context
from meta_ingress.dead_letters import DeadLetterNotices
from meta_ingress.graph import GraphClient
from meta_ingress.notices import Notifier
from meta_ingress.operator_events import OperatorEvents
from meta_ingress.operator_messages import OperatorMessages
from meta_ingress.portal_hosts import PortalHosts
from meta_ingress.settings import DispatcherSettings
from meta_ingress.window import Window

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
            return await self.messages.on_message(env, env.operator_message)
        if kind == "operator_message_edit":
            return await self.others.on_edit(env, env.operator_message_edit)
        if kind == "operator_message_delete":
            return await self.others.on_delete(env, env.operator_message_delete)
        if kind == "operator_read":
            return await self.others.on_read(env, env.operator_read)
        if kind == "line_removed":
            return await self.others.on_line_removed(env.line_removed)
        if kind == "window_closed":
            return await self.window.on_window_closed(env, env.window_closed)
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
