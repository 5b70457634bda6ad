"""bitrix-dispatcher: wa-to-b24 events -> Bitrix24 Open Lines, within each portal's REST limit.

The consumer hands over a whole poll batch (a BatchHandler, not per_event). The batch is handled in
three phases:

1. prepare (per conversation in order, conversations concurrently): dedupe (CheckProcessed), channel
   and conversation from the mapper, what to send. Nothing leaves for Bitrix24 yet.
2. deliver (per portal concurrently, sequential inside a portal): first-contact CRM look-ups, then
   every message/notice for one (connector, line) packed into imconnector.send.messages calls, plus
   delivery statuses, packed into `batch` requests, each request waiting for the portal's pacer.
3. record (per event): MarkProcessed right after Bitrix24 confirmed, then LinkMessage and
   UpdateConversation; the consumer commits the offsets only after the whole batch has its outcomes.

Idempotency: a redelivered event is found by CheckProcessed and not sent again (its bookkeeping is
redone from the recorded result, which is idempotent). Bitrix24 has no idempotency key for
imconnector.send.messages, so the one window left is between Bitrix24's answer and MarkProcessed
(one gRPC call, retried in place): a crash exactly there sends that message twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter
from zaptrix.clients import Clients
from zaptrix.health import grpc_health_check
from zaptrix.kafka import EventConsumer, EventProducer, Flow, Outcome, Received, topics_for
from zaptrix.kafka.consumer import PermanentError, TransientError
from zaptrix.logging import configure_logging, get_logger
from zaptrix.opsserver import serve_ops
from zaptrix.settings import GrpcClientSettings, KafkaSettings
from zaptrix.telemetry import setup_telemetry, shutdown_telemetry
from zaptrix.v1 import events_pb2, mapper_pb2

from bitrix_ingress import delivery as dl
from bitrix_ingress.deps import Deps, NotFound, RpcFailed
from bitrix_ingress.metrics import (
    BATCH_FALLBACKS,
    CRM,
    DELIVERED,
    MESSAGES_PER_CALL,
    NOTICES,
    REQUESTS_PER_FLUSH,
    STATUSES,
)
from bitrix_ingress.pacing import PacerRegistry
from bitrix_ingress.portal import PortalClient, RateLimitWaitExceeded
from bitrix_ingress.rest import (
    AccessDenied,
    ArgumentError,
    BitrixError,
    BitrixRest,
    MethodNotFound,
    PermanentBitrixError,
    TransientBitrixError,
    WrongAuthType,
    quiet_http_client_logs,
    result_items,
)
from bitrix_ingress.settings import DispatcherSettings
from bitrix_ingress.text import display_name, format_time, notice_text, split_name

log = get_logger(__name__)
tracer = trace.get_tracer("bitrix_ingress.dispatcher")
SERVICE = "bitrix-dispatcher"
T = TypeVar("T")


class PerMessageError(TransientBitrixError):
    """Bitrix24 accepted the call but reported this message as not delivered (SUCCESS=false)."""


def outcome_for(exc: BaseException) -> Outcome:
    if isinstance(exc, BitrixError):
        return Outcome.dead(exc.reason) if exc.permanent else Outcome.retry(exc.reason, exc.retry_after)
    if isinstance(exc, RpcFailed):
        return Outcome.dead(exc.reason) if exc.permanent else Outcome.retry(exc.reason)
    if isinstance(exc, NotFound):
        return Outcome.dead(exc.reason)
    if isinstance(exc, TransientError | PermanentError):
        return Outcome.from_exception(exc)
    return Outcome.retry(f"unexpected {type(exc).__name__}: {exc}"[:500])


# --- work items ------------------------------------------------------------------------------


@dataclass(eq=False)
class Work:
    rec: Received
    member_id: str
    conv_key: str
    connector: str
    line: int
    index: int = -1
    error: BaseException | None = None
    result: dict[str, Any] | None = None
    held: str = ""

    def done(self, result: Any) -> None:
        self.result = result if isinstance(result, dict) else {"result": result}

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc


@dataclass(eq=False)
class DeliverWork(Work):
    cm: events_pb2.CustomerMessage = field(default_factory=events_pb2.CustomerMessage)
    conv: mapper_pb2.Conversation = field(default_factory=mapper_pb2.Conversation)
    contact_name: str = ""
    need_contact: bool = False
    contact_id: str = ""
    reply_label: str = ""


@dataclass(eq=False)
class StatusWork(Work):
    st: events_pb2.WhatsAppStatus = field(default_factory=events_pb2.WhatsAppStatus)
    method: str = dl.STATUS_DELIVERY
    payload: dict[str, Any] = field(default_factory=dict)
    new_bitrix_status: str = ""


@dataclass(eq=False)
class NoticeWork(Work):
    source: str = ""
    wa_id: str = ""
    contact_name: str = ""
    external_chat_id: str = ""
    bitrix_chat_id: str = ""
    body: str = ""
    wamid: str = ""  # of the failed operator message, for UpdateMessageStatus
    via: str = "connector"


class TtlCache:
    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._data: dict[str, tuple[float, Any]] = {}

    def get(self, key: str) -> Any:
        item = self._data.get(key)
        if item is None or item[0] < time.monotonic():
            return None
        return item[1]

    def put(self, key: str, value: Any) -> None:
        if len(self._data) > 50_000:
            self._data.clear()
        self._data[key] = (time.monotonic() + self.ttl_s, value)


# --- the handler ------------------------------------------------------------------------------


class BitrixDispatcher:
    def __init__(self, settings: DispatcherSettings, deps: Deps, portals: PortalClient) -> None:
        self.settings = settings
        self.deps = deps
        self.portals = portals
        self._channels = TtlCache(settings.channel_cache_s)
        self._no_batch: set[str] = set()

    # phase 0: the batch ------------------------------------------------------------------------

    async def handle(self, batch: list[Received]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(batch)
        works: list[Work] = []
        groups: OrderedDict[str, list[int]] = OrderedDict()
        for i, rec in enumerate(batch):
            groups.setdefault(rec.envelope.conversation_key or f"#{i}", []).append(i)
        limit = asyncio.Semaphore(self.settings.dispatch_concurrency)

        async def prepare_conversation(indices: list[int]) -> None:
            async with limit:
                held = ""
                for i in indices:
                    rec = batch[i]
                    message = rec.event_type == "customer_message"
                    if held and message:  # customer messages keep their order; statuses are independent
                        outcomes[i] = Outcome.retry(
                            f"held behind an earlier message of this conversation: {held}"
                        )
                        continue
                    with trace.use_span(rec.span, end_on_exit=False):
                        prepared = await self._prepare_safe(rec)
                    if isinstance(prepared, Outcome):
                        outcomes[i] = prepared
                        if prepared.kind == "retry" and message:
                            held = prepared.reason[:200]
                    else:
                        prepared.index = i
                        works.append(prepared)

        await asyncio.gather(*(prepare_conversation(ix) for ix in groups.values()))

        by_portal: OrderedDict[str, list[Work]] = OrderedDict()
        for work in sorted(works, key=lambda w: w.index):
            by_portal.setdefault(work.member_id, []).append(work)
        await asyncio.gather(*(self._deliver_portal(m, ws) for m, ws in by_portal.items()))

        async def finish(work: Work) -> None:
            async with limit:
                with trace.use_span(work.rec.span, end_on_exit=False):
                    outcomes[work.index] = await self._finish_safe(work)

        await asyncio.gather(*(finish(w) for w in works))
        return [o or Outcome.retry("not handled") for o in outcomes]

    async def _prepare_safe(self, rec: Received) -> Work | Outcome:
        try:
            kind = rec.event_type
            if kind == "customer_message":
                return await self._prepare_customer(rec, rec.envelope.customer_message)
            if kind == "whatsapp_status":
                return await self._prepare_status(rec, rec.envelope.whatsapp_status)
            if kind == "send_failure":
                return await self._prepare_failure(rec, rec.envelope.send_failure)
            return Outcome.dead(f"unexpected event type {kind} on the wa-to-b24 topic")
        except Exception as exc:
            if not isinstance(exc, BitrixError | RpcFailed | NotFound | TransientError | PermanentError):
                log.exception("prepare failed", event_id=rec.envelope.event_id)
            return outcome_for(exc)

    async def _channel(self, phone_number_id: str) -> mapper_pb2.Channel:
        cached = self._channels.get(phone_number_id)
        if cached is not None:
            channel: mapper_pb2.Channel = cached
            return channel
        try:
            channel = await self.deps.get_channel(phone_number_id)
        except NotFound as exc:
            raise PermanentError(f"no channel is bound to phone_number_id {phone_number_id}") from exc
        if not channel.member_id or not channel.line_id:
            raise PermanentError(f"channel {phone_number_id} is not bound to a portal's Open Line")
        self._channels.put(phone_number_id, channel)
        return channel

    # phase 1: prepare --------------------------------------------------------------------------

    async def _prepare_customer(self, rec: Received, cm: events_pb2.CustomerMessage) -> Work | Outcome:
        event_id = rec.envelope.event_id
        if not cm.wamid or not cm.wa_id or not cm.phone_number_id:
            return Outcome.dead("customer message without wamid, wa_id or phone_number_id")
        check = await self.deps.check_processed(event_id)
        if check.processed:
            await self._record_from_result(cm, check.result)
            DELIVERED.labels("duplicate").inc()
            return Outcome.duplicate()
        channel = await self._channel(cm.phone_number_id)
        if not channel.active:
            return Outcome.dead(f"channel {cm.phone_number_id} is inactive")
        got = await self.deps.get_or_create_conversation(cm.phone_number_id, cm.wa_id, cm.profile_name)
        conv = got.conversation
        if not conv.external_chat_id:
            return Outcome.dead(f"conversation {conv.id} has no external_chat_id")
        crm_gateway = channel.crm_mode in (mapper_pb2.CRM_MODE_UNSPECIFIED, mapper_pb2.CRM_MODE_GATEWAY)
        reply_label = await self._reply_label(cm)
        return DeliverWork(
            rec=rec,
            member_id=channel.member_id,
            conv_key=rec.envelope.conversation_key,
            connector=channel.connector_id or self.settings.connector_id,
            line=int(channel.line_id),
            cm=cm,
            conv=conv,
            contact_name=cm.profile_name or conv.contact_name,
            need_contact=crm_gateway and not conv.bitrix_contact_id,
            contact_id=conv.bitrix_contact_id,
            reply_label=reply_label,
        )

    async def _reply_label(self, cm: events_pb2.CustomerMessage) -> str:
        target = cm.reply_to_wamid or cm.reaction_to_wamid
        if not target:
            return ""
        verb = "Reaction to" if cm.reaction_to_wamid and not cm.reply_to_wamid else "Reply to"
        try:
            link = await self.deps.find_message_link(target)
        except (NotFound, RpcFailed):
            return f"{verb} an earlier message"
        whose = (
            "the operator's message" if link.direction == mapper_pb2.DIRECTION_OUTBOUND else "their message"
        )
        when = f" of {format_time(link.created_at.ToDatetime(UTC))}" if link.HasField("created_at") else ""
        return f"{verb} {whose}{when}"

    async def _prepare_status(self, rec: Received, st: events_pb2.WhatsAppStatus) -> Work | Outcome:
        status = st.status.lower()
        event_id = rec.envelope.event_id
        if not st.wamid:
            return Outcome.dead("status without wamid")
        check = await self.deps.check_processed(event_id)
        if check.processed:
            STATUSES.labels(status, "duplicate").inc()
            return Outcome.duplicate()
        try:
            link = await self.deps.find_message_link(st.wamid)
        except NotFound:
            # Meta can report a status before the meta dispatcher has recorded the link of the message it
            # just sent: look again a few times (retry topic), then accept that it is not ours.
            if rec.attempt < self.settings.status_link_attempts:
                STATUSES.labels(status, "link_not_yet_recorded").inc()
                return Outcome.retry(f"no message link for {st.wamid} yet")
            STATUSES.labels(status, "unknown_wamid").inc()
            log.info("status for a message that is not ours", wamid=st.wamid, status=status)
            return Outcome.ok()
        if link.direction == mapper_pb2.DIRECTION_INBOUND:
            STATUSES.labels(status, "not_ours").inc()
            return Outcome.ok()
        if status not in ("delivered", "read", "failed"):
            if status == "sent":
                await self.deps.update_message_status(st.wamid, whatsapp_status="sent")
            STATUSES.labels(status or "empty", "recorded").inc()
            return Outcome.ok()
        channel = await self._channel(st.phone_number_id)
        try:
            conv = await self.deps.find_conversation_by_id(link.conversation_id)
        except NotFound:
            conv = await self.deps.find_conversation_by_customer(st.phone_number_id, st.wa_id)
        base: dict[str, Any] = {
            "rec": rec,
            "member_id": link.member_id or channel.member_id,
            "conv_key": rec.envelope.conversation_key,
            "connector": channel.connector_id or self.settings.connector_id,
            "line": int(channel.line_id),
        }
        if status == "failed":
            error = st.errors[0] if st.errors else None
            return NoticeWork(
                **base,
                source="status",
                wa_id=conv.wa_id or st.wa_id,
                contact_name=conv.contact_name,
                external_chat_id=conv.external_chat_id,
                bitrix_chat_id=link.bitrix_chat_id or conv.bitrix_chat_id,
                body=dl.failure_text(error),
                wamid=st.wamid,
                via=self.settings.bitrix_notice_via,
            )
        already = link.bitrix_status in ("delivered", "read")
        if status == "delivered" and already:
            await self.deps.update_message_status(st.wamid, whatsapp_status=status)
            STATUSES.labels(status, "already_reported").inc()
            return Outcome.ok()
        method = dl.STATUS_DELIVERY
        if status == "read" and already:
            if not self.settings.bitrix_send_read_status or link.bitrix_status == "read":
                await self.deps.update_message_status(st.wamid, whatsapp_status=status)
                STATUSES.labels(status, "already_reported").inc()
                return Outcome.ok()
            method = dl.STATUS_READING
        if not link.bitrix_message_id or not link.bitrix_chat_id:
            log.warning("status for a message without Bitrix24 ids", wamid=st.wamid)
            await self.deps.update_message_status(st.wamid, whatsapp_status=status)
            STATUSES.labels(status, "no_bitrix_ids").inc()
            return Outcome.ok()
        payload = dl.build_status_item(
            bitrix_chat_id=link.bitrix_chat_id,
            bitrix_message_id=link.bitrix_message_id,
            wamids=[st.wamid],
            external_chat_id=conv.external_chat_id,
            at=dl.unix(st.at) if method == dl.STATUS_DELIVERY else None,
        )
        # "delivered" also marks the message read in Open Lines, so a read reported as delivery is "read".
        return StatusWork(**base, st=st, method=method, payload=payload, new_bitrix_status=status)

    async def _prepare_failure(self, rec: Received, sf: events_pb2.SendFailure) -> Work | Outcome:
        check = await self.deps.check_processed(rec.envelope.event_id)
        if check.processed:
            return Outcome.duplicate()
        try:
            conv = await self.deps.find_conversation_by_external(sf.external_chat_id)
        except NotFound:
            return Outcome.dead(f"send failure for unknown external chat {sf.external_chat_id!r}")
        connector, line = sf.connector_id, int(sf.line_id)
        if not connector or not line:
            channel = await self._channel(conv.phone_number_id)
            connector = connector or channel.connector_id or self.settings.connector_id
            line = line or int(channel.line_id)
        body = sf.notice.strip() or dl.failure_text(
            sf.error if sf.HasField("error") else None, template_sent=sf.template_sent
        )
        return NoticeWork(
            rec=rec,
            member_id=sf.member_id or conv.member_id,
            conv_key=rec.envelope.conversation_key,
            connector=connector,
            line=line,
            source="send_failure",
            wa_id=conv.wa_id,
            contact_name=conv.contact_name,
            external_chat_id=sf.external_chat_id,
            bitrix_chat_id=sf.bitrix_chat_id or conv.bitrix_chat_id,
            body=body,
            via=self.settings.bitrix_notice_via,
        )

    # phase 2: deliver, per portal ------------------------------------------------------------

    async def _deliver_portal(self, member_id: str, works: list[Work]) -> None:
        requests_made = 0
        try:
            need = [w for w in works if isinstance(w, DeliverWork) and w.need_contact]
            if need:
                requests_made += await self._ensure_contacts(member_id, need)
            requests_made += await self._send(member_id, works)
            fallback = [
                w for w in works if isinstance(w, NoticeWork) and w.via == "im" and _im_refused(w.error)
            ]
            if fallback:
                for notice in fallback:
                    log.warning(
                        "im.message.add refused, posting the notice through the connector",
                        error=str(notice.error),
                    )
                    notice.error, notice.via = None, "connector"
                requests_made += await self._send(member_id, fallback)
        except Exception as exc:  # whatever happens, every work gets an outcome
            log.exception("delivery to portal failed", member_id=member_id)
            for work in works:
                if work.result is None:
                    work.fail(exc)
        REQUESTS_PER_FLUSH.observe(requests_made)

    async def _send(self, member_id: str, works: Sequence[Work]) -> int:
        stream: OrderedDict[tuple[str, int], list[dl.Item]] = OrderedDict()
        statuses: OrderedDict[tuple[str, str, int], list[dl.Item]] = OrderedDict()
        singles: list[dl.Call] = []
        for w in works:
            if w.error is not None or w.result is not None:
                continue
            if isinstance(w, DeliverWork):
                payload = dl.build_customer_item(
                    w.cm,
                    contact_name=w.contact_name,
                    external_chat_id=w.conv.external_chat_id,
                    reply_label=w.reply_label,
                    chat_name=display_name(w.contact_name, w.cm.wa_id),
                )
                item = dl.Item(w, payload, has_files=bool(payload["message"].get("files")))
                stream.setdefault((w.connector, w.line), []).append(item)
            elif isinstance(w, NoticeWork):
                if w.via == "im" and w.bitrix_chat_id:
                    params = {
                        "DIALOG_ID": f"chat{w.bitrix_chat_id}",
                        "MESSAGE": notice_text(w.body),
                        "SYSTEM": "Y",
                        "URL_PREVIEW": "N",
                    }
                    singles.append(dl.Call(dl.IM_MESSAGE_ADD, params, [dl.Item(w, params)], messages=False))
                else:
                    w.via = "connector"
                    payload = dl.build_notice_item(
                        event_id=w.rec.envelope.event_id,
                        wa_id=w.wa_id,
                        contact_name=w.contact_name,
                        external_chat_id=w.external_chat_id,
                        body=w.body,
                    )
                    stream.setdefault((w.connector, w.line), []).append(dl.Item(w, payload))
            elif isinstance(w, StatusWork):
                statuses.setdefault((w.method, w.connector, w.line), []).append(dl.Item(w, w.payload))
        calls: list[dl.Call] = []
        for (connector, line), items in stream.items():
            calls += dl.chunk(
                dl.SEND_MESSAGES,
                {"CONNECTOR": connector, "LINE": line},
                items,
                max_messages=self.settings.bitrix_max_messages_per_call,
                max_files=self.settings.bitrix_max_files_per_call,
            )
        for (method, connector, line), items in statuses.items():
            calls += dl.chunk(
                method,
                {"CONNECTOR": connector, "LINE": line},
                items,
                max_messages=self.settings.bitrix_max_messages_per_call,
                max_files=self.settings.bitrix_max_messages_per_call,
            )
        calls += singles
        requests = dl.pack(
            calls,
            use_batch=self.settings.bitrix_use_batch and member_id not in self._no_batch,
            max_commands=self.settings.bitrix_batch_max_commands,
            max_messages=self.settings.bitrix_batch_max_messages,
        )
        broken: dict[str, str] = {}
        made = 0
        throttled: BaseException | None = None
        for request in requests:
            if throttled is not None:
                # The portal stayed rate limited beyond the in-place wait: do not wait again for every
                # request of this batch (the consumer must keep polling); retry them through the topic.
                for call in request:
                    _fail_call(call, throttled)
                continue
            request = self._hold_broken(request, broken)
            if not request:
                continue
            made += await self._execute(member_id, request)
            for call in request:
                for item in call.items:
                    work: Work = item.owner
                    if isinstance(work.error, RateLimitWaitExceeded):
                        throttled = work.error
                    if call.method == dl.SEND_MESSAGES and work.error is not None and work.conv_key:
                        broken.setdefault(work.conv_key, str(work.error)[:200])
        return made

    @staticmethod
    def _hold_broken(request: list[dl.Call], broken: dict[str, str]) -> list[dl.Call]:
        """Keep conversation order: after a failed message, later ones of that conversation wait too."""
        if not broken:
            return request
        out = []
        for call in request:
            if call.method == dl.SEND_MESSAGES:
                kept = []
                for item in call.items:
                    work: Work = item.owner
                    if work.conv_key in broken:
                        work.held = broken[work.conv_key]
                        work.fail(TransientBitrixError("HELD", f"an earlier message failed: {work.held}"))
                    else:
                        kept.append(item)
                if not kept:
                    continue
                call = dl.Call(call.method, call.base, kept, call.messages)
            out.append(call)
        return out

    async def _execute(self, member_id: str, calls: list[dl.Call]) -> int:
        """Run calls as one request (batch) or one by one; returns the number of HTTP requests."""
        with self._request_spans(calls):
            if len(calls) == 1 or not self.settings.bitrix_use_batch or member_id in self._no_batch:
                made = 0
                for call in calls:
                    made += await self._execute_single(member_id, call)
                return made
            commands = {f"c{i}": (c.method, c.params()) for i, c in enumerate(calls)}
            try:
                result = await self.portals.batch(member_id, commands)
            except MethodNotFound:
                self._disable_batch(member_id, "batch method not available")
                made = 1
                for call in calls:
                    made += await self._execute_single(member_id, call)
                return made
            except Exception as exc:
                for call in calls:
                    _fail_call(call, exc)
                return 1
            made = 1
            for i, call in enumerate(calls):
                key = f"c{i}"
                err = result.errors.get(key)
                if err is None:
                    _succeed_call(call, result.results.get(key))
                elif _batch_refused(call, err):
                    self._disable_batch(member_id, err.reason)
                    made += await self._execute_single(member_id, call)
                elif isinstance(err, ArgumentError) and len(call.items) > 1:
                    made += await self._execute_single(member_id, call)
                else:
                    _fail_call(call, err)
            return made

    def _disable_batch(self, member_id: str, reason: str) -> None:
        if member_id not in self._no_batch:
            self._no_batch.add(member_id)
            BATCH_FALLBACKS.inc()
            log.warning(
                "batch refused for imconnector calls, sending them one by one",
                member_id=member_id,
                reason=reason,
            )

    async def _execute_single(self, member_id: str, call: dl.Call) -> int:
        if call.messages:
            MESSAGES_PER_CALL.observe(len(call.items))
        try:
            result = await self.portals.call(member_id, call.method, call.params())
        except ArgumentError as exc:
            if len(call.items) > 1:  # one bad message must not sink the others: bisect
                first, second = call.split()
                return (
                    1
                    + await self._execute_single(member_id, first)
                    + await self._execute_single(member_id, second)
                )
            _fail_call(call, exc)
            return 1
        except Exception as exc:
            _fail_call(call, exc)
            return 1
        _succeed_call(call, result)
        return 1

    @contextlib.contextmanager
    def _request_spans(self, calls: list[dl.Call]) -> Iterator[None]:
        """Each event's trace gets a span named after the method that carried it (``bitrix24
        imconnector.send.messages``); the HTTP request itself (a batch or a single call) runs inside the
        first event's span, and every event's span links to it."""
        owned = [(call.method, item.owner) for call in calls for item in call.items]
        if not owned:
            yield
            return
        request_name = "bitrix24 " + (calls[0].method if len(calls) == 1 else "batch")
        attributes = {"zaptrix.bitrix.calls": len(calls), "zaptrix.bitrix.items": len(owned)}
        spans = [
            tracer.start_span(
                f"bitrix24 {method}",
                context=trace.set_span_in_context(work.rec.span),
                kind=SpanKind.INTERNAL,
                attributes={
                    **attributes,
                    "zaptrix.bitrix.method": method,
                    "zaptrix.event_id": work.rec.envelope.event_id,
                },
            )
            for method, work in owned
        ]
        try:
            with tracer.start_as_current_span(
                request_name,
                context=trace.set_span_in_context(spans[0]),
                kind=SpanKind.INTERNAL,
                links=[Link(span.get_span_context()) for span in spans[1:129]],
                attributes=attributes,
            ) as request_span:
                for span in spans:
                    span.add_link(request_span.get_span_context())
                yield
        finally:
            for span in spans:
                span.end()

    # CRM (GATEWAY mode, first contact) -----------------------------------------------------------

    async def _ensure_contacts(self, member_id: str, works: list[DeliverWork]) -> int:
        """Find the customer's CRM contact by phone, else create it; never a duplicate. Returns requests."""
        by_conv: OrderedDict[str, list[DeliverWork]] = OrderedDict()
        for w in works:
            by_conv.setdefault(w.conv.id, []).append(w)
        keys = {conv_id: f"f{i}" for i, conv_id in enumerate(by_conv)}
        find: dict[str, tuple[str, dict[str, Any]]] = {}
        for conv_id, ws in by_conv.items():
            phone = f"+{ws[0].cm.wa_id}"
            find[keys[conv_id]] = (
                "crm.duplicate.findbycomm",
                {"type": "PHONE", "values": [phone, phone[1:]], "entity_type": "CONTACT"},
            )
        found, made = await self._run_commands(member_id, find, [w for ws in by_conv.values() for w in ws])
        contact_ids: dict[str, str] = {}
        add: dict[str, tuple[str, dict[str, Any]]] = {}
        for conv_id, ws in by_conv.items():
            res = found.get(keys[conv_id])
            if isinstance(res, BaseException):
                self._crm_failed(ws, res)
                continue
            ids = _contact_ids(res)
            if ids:
                contact_ids[conv_id] = str(min(ids))
                CRM.labels("found").inc()
                continue
            first = ws[0]
            name, last_name = split_name(first.contact_name)
            add[keys[conv_id]] = (
                "crm.contact.add",
                {
                    "fields": {
                        "NAME": name,
                        "LAST_NAME": last_name,
                        "PHONE": [{"VALUE": f"+{first.cm.wa_id}", "VALUE_TYPE": "MOBILE"}],
                        "SOURCE_DESCRIPTION": "WhatsApp (Zaptrix)",
                        "OPENED": "Y",
                    },
                    "params": {"REGISTER_SONET_EVENT": "N"},
                },
            )
        if add:
            adding = [w for conv_id, ws in by_conv.items() if keys[conv_id] in add for w in ws]
            created, more = await self._run_commands(member_id, add, adding)
            made += more
            for conv_id, ws in by_conv.items():
                if keys[conv_id] not in add:
                    continue
                res = created.get(keys[conv_id])
                if isinstance(res, BaseException):
                    self._crm_failed(ws, res)
                elif res:
                    contact_ids[conv_id] = str(res)
                    CRM.labels("created").inc()
        for conv_id, contact_id in contact_ids.items():
            for w in by_conv[conv_id]:
                w.contact_id = contact_id
            try:
                await self.deps.update_conversation(conv_id, bitrix_contact_id=contact_id)
            except (RpcFailed, NotFound) as exc:  # found again by phone next time: no duplicate
                log.warning("could not record the CRM contact", conversation_id=conv_id, error=str(exc))
        return made

    def _crm_failed(self, works: list[DeliverWork], exc: BaseException) -> None:
        if isinstance(exc, PermanentBitrixError):
            # No crm scope, access denied...: deliver the message anyway; the line's tracker still sees user.phone.
            CRM.labels("error").inc()
            log.error(
                "CRM contact step failed, delivering without it", error=str(exc), wa_id=works[0].cm.wa_id
            )
            return
        CRM.labels("retry").inc()
        for w in works:
            w.fail(exc)

    async def _run_commands(
        self, member_id: str, commands: dict[str, tuple[str, dict[str, Any]]], works: list[DeliverWork]
    ) -> tuple[dict[str, Any], int]:
        """Independent calls, as batch requests when allowed; results or exceptions per key."""
        out: dict[str, Any] = {}
        keys = list(commands)
        step = self.settings.bitrix_batch_max_commands if self.settings.bitrix_use_batch else 1
        made = 0
        spans_for = [dl.Call("crm", {}, [dl.Item(w, {})]) for w in works]
        with self._request_spans(spans_for):
            for start in range(0, len(keys), step):
                part = {k: commands[k] for k in keys[start : start + step]}
                made += 1
                if len(part) == 1:
                    ((key, (method, params)),) = part.items()
                    try:
                        out[key] = await self.portals.call(member_id, method, params)
                    except Exception as exc:
                        out[key] = exc
                    continue
                try:
                    res = await self.portals.batch(member_id, part)
                except Exception as exc:
                    out.update(dict.fromkeys(part, exc))
                    continue
                out.update(res.results)
                out.update(res.errors)
        return out, made

    # phase 3: record -----------------------------------------------------------------------------

    async def _finish_safe(self, work: Work) -> Outcome:
        try:
            return await self._finish(work)
        except Exception as exc:
            if not isinstance(exc, BitrixError | RpcFailed | NotFound):
                log.exception("recording failed", event_id=work.rec.envelope.event_id)
            return outcome_for(exc)

    async def _finish(self, work: Work) -> Outcome:
        event_id = work.rec.envelope.event_id
        if work.error is not None or work.result is None:
            exc = work.error or TransientBitrixError("NOT_SENT", "no result from Bitrix24")
            outcome = outcome_for(exc)
            label = "held" if work.held else outcome.kind
            if isinstance(work, DeliverWork):
                DELIVERED.labels(label).inc()
            elif isinstance(work, StatusWork):
                STATUSES.labels(work.st.status, label).inc()
            if outcome.kind == "dead":
                log.error("event failed permanently", event_id=event_id, reason=outcome.reason)
            return outcome
        if isinstance(work, DeliverWork):
            raw_session = work.result.get("session")
            session: dict[str, Any] = raw_session if isinstance(raw_session, dict) else {}
            chat_id = str(session.get("CHAT_ID") or session.get("chat_id") or work.conv.bitrix_chat_id or "")
            record = {
                "chat": chat_id,
                "session": str(session.get("ID") or session.get("id") or ""),
                "conv": work.conv.id,
                "member": work.member_id,
                "contact": work.contact_id,
                "at": int(time.time()),
            }
            await self._mark(event_id, json.dumps(record, separators=(",", ":")))
            DELIVERED.labels("ok").inc()
            await self._record_delivery(work.cm, record, work.conv, work.contact_name)
            return Outcome.ok()
        if isinstance(work, StatusWork):
            await self._mark(event_id, work.method)
            await self.deps.update_message_status(
                work.st.wamid, whatsapp_status=work.st.status, bitrix_status=work.new_bitrix_status
            )
            STATUSES.labels(work.st.status, "reported").inc()
            return Outcome.ok()
        if isinstance(work, NoticeWork):
            await self._mark(event_id, f"notice:{work.via}")
            NOTICES.labels(work.source, work.via).inc()
            log.info(
                "failure notice posted in the operator's chat",
                event_id=event_id,
                external_chat_id=work.external_chat_id,
                via=work.via,
                wamid=work.wamid,
            )
            if work.wamid:
                await self.deps.update_message_status(
                    work.wamid, whatsapp_status="failed", bitrix_status="failed"
                )
            return Outcome.ok()
        return Outcome.dead(f"unknown work {type(work).__name__}")

    async def _mark(self, event_id: str, result: str) -> None:
        """MarkProcessed right after Bitrix24 confirmed; retried in place to keep the duplicate window small."""
        await _in_place(lambda: self.deps.mark_processed(event_id, result))

    async def _record_delivery(
        self,
        cm: events_pb2.CustomerMessage,
        record: dict[str, Any],
        conv: mapper_pb2.Conversation | None,
        name: str,
    ) -> None:
        conv_id = str(record.get("conv") or (conv.id if conv is not None else ""))
        chat_id = str(record.get("chat") or "")
        link = mapper_pb2.MessageLink(
            conversation_id=conv_id,
            direction=mapper_pb2.DIRECTION_INBOUND,
            wamid=cm.wamid,
            member_id=str(record.get("member") or (conv.member_id if conv is not None else "")),
            bitrix_chat_id=chat_id,
            bitrix_status="delivered",
        )
        sent_at = cm.sent_at.ToDatetime(UTC) if cm.HasField("sent_at") else datetime.now(UTC)
        update: dict[str, Any] = {"last_message_at": sent_at, "last_customer_message_at": sent_at}
        if chat_id and (conv is None or conv.bitrix_chat_id != chat_id):
            update["bitrix_chat_id"] = chat_id
        if name and (conv is None or conv.contact_name != name):
            update["contact_name"] = name
        await asyncio.gather(
            _in_place(lambda: self.deps.link_message(link)),
            _in_place(lambda: self.deps.update_conversation(conv_id, **update)),
        )

    async def _record_from_result(self, cm: events_pb2.CustomerMessage, result: str) -> None:
        """A redelivered, already-sent message: redo the (idempotent) bookkeeping, never the send."""
        try:
            record = json.loads(result) if result else {}
        except ValueError:
            record = {}
        if isinstance(record, dict) and record.get("conv"):
            await self._record_delivery(cm, record, None, "")


async def _in_place(fn: Callable[[], Awaitable[T]], budget_s: float = 8.0) -> T:
    async for attempt in AsyncRetrying(
        stop=stop_after_delay(budget_s),
        wait=wait_exponential_jitter(multiplier=0.2, max=2.0, jitter=0.2),
        retry=retry_if_exception_type(RpcFailed),
        reraise=True,
    ):
        with attempt:
            return await fn()
    raise AssertionError("unreachable")  # pragma: no cover


def _contact_ids(result: Any) -> list[int]:
    if not isinstance(result, dict):
        return []
    ids = []
    for value in result.get("CONTACT") or []:
        with contextlib.suppress(TypeError, ValueError):
            ids.append(int(value))
    return ids


def _im_refused(exc: BaseException | None) -> bool:
    return isinstance(exc, AccessDenied | MethodNotFound | ArgumentError | WrongAuthType)


def _batch_refused(call: dl.Call, err: BitrixError) -> bool:
    return call.method.startswith("imconnector.") and (
        isinstance(err, MethodNotFound | WrongAuthType) or err.code == "ERROR_BATCH_METHOD_NOT_ALLOWED"
    )


def _fail_call(call: dl.Call, exc: BaseException) -> None:
    for item in call.items:
        owner: Work = item.owner
        owner.fail(exc)


def _succeed_call(call: dl.Call, result: Any) -> None:
    if call.method != dl.SEND_MESSAGES:
        failed = isinstance(result, dict) and result.get("SUCCESS") is False
        for item in call.items:
            owner: Work = item.owner
            if failed:
                owner.fail(
                    PerMessageError(
                        "SUCCESS_FALSE", f"{call.method} answered SUCCESS=false", method=call.method
                    )
                )
            else:
                owner.done(result)
        return
    per_message = result_items(result)
    overall_failed = isinstance(result, dict) and result.get("SUCCESS") is False
    for index, item in enumerate(call.items):
        owner = item.owner
        res = per_message[index] if index < len(per_message) else None
        res_failed = isinstance(res, dict) and res.get("SUCCESS") is False
        if res_failed or (res is None and overall_failed):
            errors = res.get("ERRORS") if isinstance(res, dict) else None
            detail = "; ".join(str(e) for e in errors) if isinstance(errors, list) else str(errors or "")
            owner.fail(PerMessageError("MESSAGE_NOT_DELIVERED", detail[:300], method=call.method))
        else:
            owner.done(res if isinstance(res, dict) else {})


# --- process ---------------------------------------------------------------------------------


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
    rest = BitrixRest(
        timeout_s=settings.bitrix_rest_timeout_s,
        connect_timeout_s=settings.bitrix_rest_connect_timeout_s,
        body=settings.bitrix_rest_body,
    )
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
