"""meta-dispatcher: operator events (Kafka, Flow.B24_TO_WA) → WhatsApp Graph API.

Per OperatorMessage, in this order:
1. dedupe: CheckProcessed(event_id) → already done: nothing happens (duplicate);
2. conversation by external_chat_id (mapper), channel binding (mapper, cached), credentials (token-keeper,
   cached);
3. plan: BB-code → WhatsApp text, chunks, files by media type, reply context (outbound.py);
4. 24-h window: a conversation whose last customer message is known to be older than 24 h gets no
   plain send: the operator is told at once (SendFailure) and the channel's re-engagement template is
   sent where configured. Meta's 131047 (synchronous, or later as a failed status) stays the last word;
5. send each part, paced per phone number and per customer (sender.py);
6. LinkMessage(wamid ↔ member_id + bitrix_message_id, OUTBOUND), then MarkProcessed(event_id, wamids).
   The consumer commits the offset after the handler returns.

WindowClosed (Meta reported 131047 after accepting a send; produced by the web part): the channel's
re-engagement template is sent under the same per-conversation cooldown, and the operator told.

Redelivery never sends twice what was recorded: parts of a multi-part message are recorded one by one
(``<event_id>#p<n>``), and a send whose recording failed is remembered in memory so that the retry only
records it. What remains is the crash window: the process dies between Meta's 200 and MarkProcessed
(milliseconds). The event is then delivered again and the part is sent a second time; the Cloud API
offers no idempotency key to close it. See docs/meta-ingress.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
from zaptrix.clients import Clients
from zaptrix.health import grpc_health_check
from zaptrix.kafka import (
    EventConsumer,
    EventProducer,
    Flow,
    Outcome,
    PermanentError,
    PublishError,
    Received,
    TransientError,
    per_event,
    topics_for,
)
from zaptrix.logging import configure_logging, get_logger
from zaptrix.opsserver import serve_ops
from zaptrix.settings import GrpcClientSettings, KafkaSettings
from zaptrix.telemetry import setup_telemetry, shutdown_telemetry
from zaptrix.v1 import events_pb2, mapper_pb2

from meta_ingress.bbcode import to_whatsapp
from meta_ingress.cache import AsyncTtlCache, NotFoundError
from meta_ingress.credentials import Credentials, CredentialsCache, UnknownChannel
from meta_ingress.errors import Action, classify, describe, is_media_problem, notice_for
from meta_ingress.graph import GraphApiError, GraphClient, GraphTransportError
from meta_ingress.metrics import DUPLICATES, OPERATOR_EVENTS, SEND_FAILURES, TEMPLATES, TOKEN_ERRORS
from meta_ingress.outbound import (
    FileRejected,
    Part,
    Plan,
    choose_kind,
    media_payload,
    normalize_mime,
    plan_message,
    template_payload,
    text_payload,
)
from meta_ingress.rpc import RpcConflict, RpcNotFound, call
from meta_ingress.sender import Sender
from meta_ingress.settings import DispatcherSettings, url_allowed

SERVICE = "meta-dispatcher"
WINDOW_S = 24 * 3600
log = get_logger(__name__)


class PartFailed(Exception):
    """One file of a message cannot be sent (shown to the operator; the other parts go on)."""


@dataclass
class Target:
    conversation: mapper_pb2.Conversation
    channel: mapper_pb2.Channel
    creds: Credentials

    @property
    def phone_number_id(self) -> str:
        return self.conversation.phone_number_id

    @property
    def wa_id(self) -> str:
        return self.conversation.wa_id

    @property
    def key(self) -> str:
        return f"{self.phone_number_id}:{self.wa_id}"


@dataclass
class Notice:
    """Where a failure notice goes (the SendFailure fields that come from the Bitrix24 side)."""

    event_id: str
    member_id: str
    line_id: int
    connector_id: str
    bitrix_chat_id: str
    bitrix_message_id: str  # empty: an informational notice, no message of the operator failed
    external_chat_id: str
    conversation_key: str = ""


@dataclass
class Failure:
    error: events_pb2.GraphError | None
    text: str
    code: str = "local"


@dataclass
class Delivery:
    wamids: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


@dataclass
class Reengagement:
    """What became of the re-engagement template: none (not configured), sent, cooldown or failed; ``text``
    is the sentence for the operator's notice."""

    outcome: str
    text: str = ""

    @property
    def sent(self) -> bool:
        return self.outcome == "sent"


def window_error(message: str, details: str) -> events_pb2.GraphError:
    return events_pb2.GraphError(code=131047, title="Re-engagement message", message=message, details=details)


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def graph_error(exc: BaseException) -> events_pb2.GraphError:
    if isinstance(exc, GraphApiError):
        return events_pb2.GraphError(
            code=exc.code if exc.code is not None and 0 <= exc.code < 2**31 else 0,
            title=exc.title,
            message=exc.message[:500],
            details=exc.details[:500],
        )
    return events_pb2.GraphError(code=0, title=type(exc).__name__, message=str(exc)[:500])


class MetaDispatcher:
    def __init__(
        self,
        settings: DispatcherSettings,
        clients: Clients,
        graph: GraphClient,
        producer: EventProducer,
        out_topic: str,
        files_http: httpx.AsyncClient | None = None,
    ) -> None:
        self.settings = settings
        self.clients = clients
        self.graph = graph
        self.producer = producer
        self.out_topic = out_topic
        self.sender = Sender(settings, graph)
        self.credentials = CredentialsCache(clients, settings)
        self.channels: AsyncTtlCache[str, mapper_pb2.Channel] = AsyncTtlCache(
            self._load_channel,
            ttl_s=settings.channel_cache_ttl_s,
            negative_ttl_s=min(5.0, settings.channel_cache_ttl_s),
            stale_max_s=600.0,
            name="channels",
        )
        # Bitrix24 file downloads: a client of its own, so no Graph token can ever reach Bitrix24.
        self.files = files_http or httpx.AsyncClient(
            timeout=httpx.Timeout(settings.file_fetch_timeout_s, connect=5.0),
            follow_redirects=True,
            headers={"User-Agent": "zaptrix-meta-dispatcher"},
        )
        # Sends that happened but whose recording (MarkProcessed) has not succeeded yet: part id → wamid.
        self._sent: OrderedDict[str, str] = OrderedDict()

    async def aclose(self) -> None:
        await self.files.aclose()

    # --- dispatch --------------------------------------------------------------------------------------
    async def handle(self, rec: Received) -> Outcome | None:
        env = rec.envelope
        kind = rec.event_type
        if kind == "operator_message":
            return await self.on_message(env, env.operator_message)
        if kind == "operator_message_edit":
            return await self.on_edit(env, env.operator_message_edit)
        if kind == "operator_message_delete":
            return await self.on_delete(env, env.operator_message_delete)
        if kind == "operator_read":
            return await self.on_read(env, env.operator_read)
        if kind == "line_removed":
            return await self.on_line_removed(env.line_removed)
        if kind == "window_closed":
            return await self.on_window_closed(env, env.window_closed)
        raise PermanentError(f"unexpected event type {kind} on the {Flow.B24_TO_WA} topic")

    # --- mapper / token-keeper ------------------------------------------------------------------------
    async def _load_channel(self, phone_number_id: str) -> mapper_pb2.Channel:
        try:
            return await call(
                "mapper GetChannel",
                self.clients.mapper.GetChannel(
                    mapper_pb2.GetChannelRequest(phone_number_id=phone_number_id),
                    timeout=self.clients.timeout,
                ),
            )
        except RpcNotFound:
            raise NotFoundError(f"channel {phone_number_id} is not bound") from None

    async def _conversation(self, external_chat_id: str) -> mapper_pb2.Conversation:
        if not external_chat_id:
            raise RpcNotFound("the event names no external_chat_id")
        request = mapper_pb2.FindConversationRequest(external_chat_id=external_chat_id)
        return await call(
            "mapper FindConversation",
            self.clients.mapper.FindConversation(request, timeout=self.clients.timeout),
        )

    async def _target(self, external_chat_id: str, notice: Notice) -> Target:
        """The conversation, channel and credentials, or PermanentError (with a notice to the operator)."""
        try:
            conversation = await self._conversation(external_chat_id)
        except RpcNotFound:
            reason = f"unknown conversation: no conversation has external_chat_id {external_chat_id!r}"
            await self._notify(
                notice, None, "Not delivered: this chat is not linked to a WhatsApp conversation."
            )
            raise PermanentError(reason) from None
        notice.conversation_key = f"{conversation.phone_number_id}:{conversation.wa_id}"
        try:
            channel = await self.channels.get(conversation.phone_number_id)
            creds = await self.credentials.get(conversation.phone_number_id)
        except (NotFoundError, UnknownChannel) as exc:
            await self._notify(
                notice,
                None,
                "Not delivered: the WhatsApp channel of this chat is not configured (no binding or "
                "no credentials). An administrator must set it up; the message is kept.",
            )
            raise PermanentError(str(exc)) from None
        return Target(conversation, channel, creds)

    async def _done(self, event_id: str) -> str | None:
        """The result of an event part (or template) that already had its effect, else None: first what
        this process sent but could not record yet, then the mapper's dedupe record."""
        if event_id in self._sent:
            return self._sent[event_id]
        return await self._recorded(event_id)

    async def _recorded(self, event_id: str) -> str | None:
        """The mapper's dedupe record of an event (MarkProcessed happened), else None."""
        resp = await call(
            "mapper CheckProcessed",
            self.clients.mapper.CheckProcessed(
                mapper_pb2.CheckProcessedRequest(event_id=event_id), timeout=self.clients.timeout
            ),
        )
        return resp.result if resp.processed else None

    async def _mark(self, event_id: str, result: str) -> None:
        request = mapper_pb2.MarkProcessedRequest(event_id=event_id, result=result[:1000])
        await self._after_send(
            "mapper MarkProcessed",
            lambda: self.clients.mapper.MarkProcessed(request, timeout=self.clients.timeout),
        )
        self._sent.pop(event_id, None)

    async def _after_send(self, what: str, rpc: Callable[[], Awaitable[Any]]) -> None:
        """Recording after a send: a few quick attempts in process (a failure here must not cost a second
        send; the in-memory record covers the retry of the event if all of them fail)."""
        delay = 0.1
        for attempt in range(4):
            try:
                await call(what, rpc())
                return
            except TransientError:
                if attempt == 3:
                    raise
                await asyncio.sleep(delay)
                delay *= 3

    def _remember(self, part_id: str, wamid: str) -> None:
        self._sent[part_id] = wamid
        while len(self._sent) > 50_000:
            self._sent.popitem(last=False)

    async def _link(self, target: Target, notice: Notice, wamids: list[str]) -> None:
        for i, wamid in enumerate(wamids):
            link = mapper_pb2.MessageLink(
                conversation_id=target.conversation.id,
                direction=mapper_pb2.DIRECTION_OUTBOUND,
                wamid=wamid,
                member_id=notice.member_id,
                # Only the first message carries the Bitrix24 id (one link per Bitrix24 message); the others
                # are linked to the conversation so that a customer quoting them can still be resolved.
                bitrix_message_id=notice.bitrix_message_id if i == 0 else "",
                bitrix_chat_id=notice.bitrix_chat_id,
                whatsapp_status="accepted",
            )
            request = mapper_pb2.LinkMessageRequest(link=link)
            try:
                await self._after_send(
                    "mapper LinkMessage",
                    partial(self.clients.mapper.LinkMessage, request, timeout=self.clients.timeout),
                )
            except (RpcConflict, PermanentError) as exc:
                level = log.warning if i == 0 else log.debug
                level("message link not recorded", wamid=wamid, error=str(exc))

    # --- notices ---------------------------------------------------------------------------------------
    async def _notify(
        self, notice: Notice, error: events_pb2.GraphError | None, text: str, template_sent: bool = False
    ) -> None:
        failure = events_pb2.SendFailure(
            member_id=notice.member_id,
            line_id=notice.line_id,
            connector_id=notice.connector_id,
            bitrix_chat_id=notice.bitrix_chat_id,
            bitrix_message_id=notice.bitrix_message_id,
            external_chat_id=notice.external_chat_id,
            notice=text[:2000],
            template_sent=template_sent,
        )
        if error is not None:
            failure.error.CopyFrom(error)
        env = events_pb2.Envelope(
            event_id=notice.event_id,
            conversation_key=notice.conversation_key or f"b24:{notice.member_id}:{notice.external_chat_id}",
            source=events_pb2.PLATFORM_WHATSAPP,
            send_failure=failure,
        )
        env.occurred_at.GetCurrentTime()
        try:
            await self.producer.publish(self.out_topic, [env])
        except PublishError as exc:
            raise TransientError(f"cannot publish the failure notice: {exc}") from exc
        log.info(
            "failure notice produced", notice_event_id=notice.event_id, code=error.code if error else None
        )

    # --- OperatorMessage -------------------------------------------------------------------------------
    async def on_message(self, env: events_pb2.Envelope, om: events_pb2.OperatorMessage) -> Outcome:
        event_id = env.event_id
        if await self._recorded(event_id) is not None:
            DUPLICATES.labels("operator_message").inc()
            log.info("operator message already delivered", event_id=event_id)
            return Outcome.duplicate()
        notice = Notice(
            event_id=f"wa-fail:{om.member_id}:{om.bitrix_message_id}",
            member_id=om.member_id,
            line_id=om.line_id,
            connector_id=om.connector_id,
            bitrix_chat_id=om.bitrix_chat_id,
            bitrix_message_id=om.bitrix_message_id,
            external_chat_id=om.external_chat_id,
        )
        target = await self._target(om.external_chat_id, notice)
        plan = plan_message(om.text_bbcode, list(om.files), om.reply_to_external_id)
        return await self._deliver(event_id, target, plan, notice, link=True, reengage=True)

    def _window_closed(self, conversation: mapper_pb2.Conversation) -> bool:
        if not self.settings.window_precheck or not conversation.HasField("last_customer_message_at"):
            return False
        return time.time() - conversation.last_customer_message_at.seconds >= WINDOW_S

    async def _deliver(
        self, event_id: str, target: Target, plan: Plan, notice: Notice, *, link: bool, reengage: bool
    ) -> Outcome:
        if not target.channel.active:
            await self._notify(notice, None, "Not delivered: this WhatsApp channel is switched off.")
            SEND_FAILURES.labels("channel_inactive", "notified").inc()
            await self._mark(event_id, "failed:channel_inactive")
            return Outcome.ok()
        if not plan.parts and not plan.rejected:
            log.warning("operator message without text or files: nothing to send", event_id=event_id)
            await self._mark(event_id, "empty")
            return Outcome.ok()
        if plan.parts and self._window_closed(target.conversation):
            log.info("24-h window closed (last customer message): not sending", event_id=event_id)
            await self._window_failure(event_id, target, notice, None, reengage)
            await self._mark(event_id, "failed:131047")
            return Outcome.ok()
        delivery = Delivery(
            failures=[Failure(None, f"The file “{f.name}” was not sent: {r}.") for f, r in plan.rejected]
        )
        multi = len(plan.parts) > 1
        for part in plan.parts:
            part_id = f"{event_id}#p{part.index}" if multi else event_id
            done = await self._done(part_id) if multi else self._sent.get(part_id)
            if done is not None:
                if not done.startswith("failed:"):
                    delivery.wamids.append(done)
                continue
            try:
                wamid = await self._send_part(target, part, part_id)
            except PartFailed as exc:
                delivery.failures.append(Failure(None, str(exc)))
                SEND_FAILURES.labels("file", "notified").inc()
                if multi:
                    await self._mark(part_id, "failed:file")
                continue
            except (GraphApiError, GraphTransportError) as exc:
                outcome = await self._part_error(
                    exc, event_id, part, part_id, target, notice, delivery, reengage
                )
                if outcome == "continue":
                    continue
                if outcome == "stop":
                    break
                return Outcome.ok()  # "window": handled completely
            self._remember(part_id, wamid)
            delivery.wamids.append(wamid)
            if multi:
                await self._mark(part_id, wamid)
        if delivery.wamids and link:
            await self._link(target, notice, delivery.wamids)
        if delivery.failures:
            first = delivery.failures[0]
            text = "\n".join(f.text for f in delivery.failures)
            if delivery.wamids:
                text += "\nThe rest of the message was delivered."
            await self._notify(notice, first.error, text)
        result = ",".join(delivery.wamids) or "failed:" + ",".join(f.code for f in delivery.failures)
        await self._mark(event_id, result)
        log.info("operator message sent", event_id=event_id, wamids=delivery.wamids, parts=len(plan.parts))
        return Outcome.ok()

    async def _part_error(
        self,
        exc: GraphApiError | GraphTransportError,
        event_id: str,
        part: Part,
        part_id: str,
        target: Target,
        notice: Notice,
        delivery: Delivery,
        reengage: bool,
    ) -> str:
        """Decide after a failed part: "continue" (next part), "stop" (no further part), "window" (done),
        or raise TransientError / PermanentError."""
        action = classify(exc)
        if action in (Action.RETRY, Action.THROTTLE):
            SEND_FAILURES.labels(self._code(exc), "retried").inc()
            raise TransientError(f"Graph API: {describe(exc)}", getattr(exc, "retry_after", None))
        if action == Action.PAIR:
            SEND_FAILURES.labels("131056", "retried").inc()
            retry_after = self.sender.defer_after_pair_error(target.phone_number_id, target.wa_id, part_id)
            raise TransientError("Graph API 131056: pair rate limit", retry_after)
        assert isinstance(exc, GraphApiError)
        if action == Action.WINDOW:
            SEND_FAILURES.labels("131047", "notified").inc()
            if delivery.wamids:
                await self._link(target, notice, delivery.wamids)
            await self._window_failure(event_id, target, notice, exc, reengage)
            await self._mark(event_id, ",".join(delivery.wamids) or "failed:131047")
            return "window"
        if action == Action.NOTIFY:
            SEND_FAILURES.labels(self._code(exc), "notified").inc()
            media = is_media_problem(exc) and part.kind != "text"
            prefix = f"The file “{part.filename}”: " if media else ""
            delivery.failures.append(Failure(graph_error(exc), prefix + notice_for(exc), self._code(exc)))
            if media and part_id != event_id:
                await self._mark(part_id, f"failed:{self._code(exc)}")
            return "continue" if media else "stop"
        # AUTH and FAULT: someone must act; the operator is told, the event goes to the dead-letter topic.
        if action == Action.AUTH:
            TOKEN_ERRORS.labels(target.phone_number_id).inc()
            log.error(
                "Graph API rejected the channel's access token: renew it with token-keeper-admin",
                phone_number_id=target.phone_number_id,
                code=exc.code,
                detail=exc.message[:200],
            )
        SEND_FAILURES.labels(self._code(exc), "dead_lettered").inc()
        if delivery.wamids:
            await self._link(target, notice, delivery.wamids)
        await self._notify(notice, graph_error(exc), notice_for(exc))
        raise PermanentError(f"Graph API {action.value}: {describe(exc)}")

    @staticmethod
    def _code(exc: BaseException) -> str:
        return exc.label if isinstance(exc, GraphApiError) else "transport"

    async def _send_part(self, target: Target, part: Part, part_id: str) -> str:
        """Send one part; refreshes the token once after 190 and drops a refused reply context once."""
        pnid, to = target.phone_number_id, target.wa_id
        self.sender.check_pair((pnid, to), part_id)  # before any upload work
        token = target.creds.access_token
        if part.kind == "text":
            payload = text_payload(to, part.text, part.context_id)
        else:
            payload = media_payload(to, part, await self._media_ref(target, part, token))
        for attempt in range(3):
            try:
                return await self.sender.send(pnid, to, part_id, token, payload)
            except GraphApiError as exc:
                action = classify(exc)
                if action == Action.AUTH and attempt == 0:
                    self.credentials.invalidate(pnid)
                    fresh = await self.credentials.get(pnid)
                    if fresh.access_token and fresh.access_token != token:
                        log.warning("token rejected; retrying once with the token token-keeper has now")
                        token = fresh.access_token
                        target.creds = fresh
                        continue
                if action == Action.FAULT and "context" in payload and exc.code in (100, 131009):
                    log.warning("reply context refused; sending without it", code=exc.code)
                    payload.pop("context")
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _media_ref(self, target: Target, part: Part, token: str) -> dict[str, str]:
        file = part.file
        assert file is not None
        name = part.filename
        if not file.link:
            raise PartFailed(f"The file “{name}” was not sent: Bitrix24 gave no download link.")
        if not url_allowed(file.link, self.settings):
            raise PartFailed(f"The file “{name}” was not sent: its link is not https.")
        if self.settings.media_send_mode == "link":
            return {"link": file.link}
        data, mime = await self._fetch(file.link, part)
        try:
            part.kind = choose_kind(mime, len(data))  # the real size may call for a document
        except FileRejected as exc:
            raise PartFailed(f"The file “{name}” was not sent: {exc}.") from None
        part.mime = mime
        pnid = target.phone_number_id
        media_id = await self.sender.with_retries(
            lambda: self.graph.upload_media(pnid, token, data, mime, name)
        )
        return {"id": media_id}

    async def _fetch(self, link: str, part: Part) -> tuple[bytes, str]:
        """Download a Bitrix24 file (bounded by upload_max_bytes)."""
        name = part.filename
        cap = self.settings.upload_max_bytes
        try:
            async with self.files.stream("GET", link) as resp:
                if resp.status_code >= 500 or resp.status_code == 429:
                    raise TransientError(f"Bitrix24 file download answered HTTP {resp.status_code}")
                if resp.status_code >= 400:
                    raise PartFailed(
                        f"The file “{name}” was not sent: Bitrix24 refused the download (HTTP {resp.status_code})."
                    )
                ctype = resp.headers.get("content-type", "")
                if ctype.lower().startswith("text/html") and not part.mime.startswith("text/html"):
                    raise PartFailed(
                        f"The file “{name}” was not sent: Bitrix24 returned a web page instead of the file "
                        "(the link may need a login)."
                    )
                declared = resp.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > cap:
                    raise PartFailed(f"The file “{name}” was not sent: it is larger than {cap // 2**20} MB.")
                buf = bytearray()
                async for chunk in resp.aiter_bytes():
                    buf += chunk
                    if len(buf) > cap:
                        raise PartFailed(
                            f"The file “{name}” was not sent: it is larger than {cap // 2**20} MB."
                        )
        except httpx.HTTPError as exc:
            raise TransientError(f"Bitrix24 file download failed: {type(exc).__name__}") from exc
        mime = part.mime if part.mime != "application/octet-stream" else normalize_mime(ctype, name)
        return bytes(buf), mime

    # --- 24-h window -----------------------------------------------------------------------------------
    async def _window_failure(
        self, event_id: str, target: Target, notice: Notice, exc: GraphApiError | None, reengage: bool
    ) -> None:
        error = (
            graph_error(exc)
            if exc is not None
            else window_error(
                "More than 24 hours have passed since the customer last replied (known before sending).",
                "The last customer message of this conversation is older than 24 hours.",
            )
        )
        text = notice_for(GraphApiError(400, 131047, error.message))
        outcome = await self._reengage(target, event_id) if reengage else Reengagement("none")
        await self._notify(notice, error, text + outcome.text, template_sent=outcome.sent)

    async def _reengage(self, target: Target, event_id: str) -> Reengagement:
        """Send the channel's re-engagement template, at most once per conversation per cooldown period."""
        name = target.channel.reengagement_template
        if not name:
            return Reengagement("none")
        sent_text = f" The re-engagement template “{name}” was sent; write again once the customer replies."
        bucket = int(time.time()) // self.settings.template_cooldown_s
        key = f"wa-reengage:{target.phone_number_id}:{target.wa_id}:{bucket}"
        done = await self._done(key)
        if done is not None:
            if done.endswith(f" {event_id}"):  # this event sent it before a retry
                return Reengagement("sent", sent_text)
            TEMPLATES.labels("cooldown").inc()
            return Reengagement(
                "cooldown",
                " A re-engagement template was already sent recently; the customer needs to reply first.",
            )
        payload = template_payload(target.wa_id, name, target.channel.template_language)
        try:
            wamid = await self.sender.send(
                target.phone_number_id, target.wa_id, key, target.creds.access_token, payload
            )
        except (GraphApiError, GraphTransportError) as exc:
            if classify(exc) in (Action.RETRY, Action.THROTTLE, Action.PAIR):
                raise TransientError(
                    f"re-engagement template: {describe(exc)}", getattr(exc, "retry_after", None)
                ) from exc
            TEMPLATES.labels("failed").inc()
            log.warning("re-engagement template refused", template=name, error=describe(exc))
            return Reengagement(
                "failed", f" The re-engagement template “{name}” could not be sent ({describe(exc)})."
            )
        self._remember(key, f"{wamid} {event_id}")
        await self._mark(key, f"{wamid} {event_id}")
        TEMPLATES.labels("sent").inc()
        log.info("re-engagement template sent", template=name, wamid=wamid)
        return Reengagement("sent", sent_text)

    async def on_window_closed(self, env: events_pb2.Envelope, wc: events_pb2.WindowClosed) -> Outcome:
        """Meta reported 131047 for a send it had accepted (a failed status, forwarded by the web part).
        The operator's notice comes from the WhatsAppStatus; here only the re-engagement template is sent,
        and the operator is told when it was (or could not be)."""
        event_id = env.event_id
        if await self._recorded(event_id) is not None:
            DUPLICATES.labels("window_closed").inc()
            return Outcome.duplicate()
        outcome = await self._window_closed_template(event_id, wc)
        OPERATOR_EVENTS.labels("window_closed", outcome).inc()
        log.info("24-h window closed after a send", event_id=event_id, wamid=wc.wamid, outcome=outcome)
        await self._mark(event_id, outcome)
        return Outcome.ok()

    async def _window_closed_template(self, event_id: str, wc: events_pb2.WindowClosed) -> str:
        """What happened after an asynchronous 131047: the outcome label (also the dedupe record)."""
        pnid = wc.phone_number_id
        request = mapper_pb2.FindConversationRequest(
            channel_customer=mapper_pb2.ChannelCustomer(phone_number_id=pnid, wa_id=wc.wa_id)
        )
        try:
            conversation = await call(
                "mapper FindConversation",
                self.clients.mapper.FindConversation(request, timeout=self.clients.timeout),
            )
        except RpcNotFound:
            log.info("closed window in a conversation we do not know", wamid=wc.wamid, phone_number_id=pnid)
            return "unknown_conversation"
        try:
            channel = await self.channels.get(pnid)
        except NotFoundError:
            log.warning("closed window on a channel without binding", phone_number_id=pnid)
            return "unknown_channel"
        if not channel.reengagement_template:
            return "no_template"  # the operator already has the notice (from the failed status)
        if not channel.active:
            return "channel_inactive"
        try:
            creds = await self.credentials.get(pnid)
        except UnknownChannel as exc:
            raise PermanentError(str(exc)) from None
        target = Target(conversation, channel, creds)
        result = await self._reengage(target, event_id)
        if result.outcome == "cooldown":
            return "cooldown"
        notice = Notice(
            event_id=f"wa-fail:{conversation.member_id or channel.member_id}:window:{wc.wamid}",
            member_id=conversation.member_id or channel.member_id,
            line_id=channel.line_id,
            connector_id=channel.connector_id,
            bitrix_chat_id=conversation.bitrix_chat_id,
            bitrix_message_id="",  # informational: the failed message itself was reported by its status
            external_chat_id=conversation.external_chat_id,
            conversation_key=target.key,
        )
        error = window_error(
            "More than 24 hours have passed since the customer last replied (reported after the send).",
            "WhatsApp accepted the message, then reported it failed with 131047.",
        )
        text = "WhatsApp did not deliver a message: the customer last wrote more than 24 hours ago."
        await self._notify(notice, error, text + result.text, template_sent=result.sent)
        return "template_sent" if result.sent else "template_failed"

    # --- edits, deletes, reads, line removal ----------------------------------------------------------
    async def on_edit(self, env: events_pb2.Envelope, e: events_pb2.OperatorMessageEdit) -> Outcome:
        notice = Notice(
            event_id=f"wa-fail:{e.member_id}:{e.bitrix_message_id}:edit:{_short(env.event_id)}",
            member_id=e.member_id,
            line_id=e.line_id,
            connector_id=e.connector_id,
            bitrix_chat_id=e.bitrix_chat_id,
            bitrix_message_id="",
            external_chat_id=e.external_chat_id,
        )
        if self.settings.edit_mode == "notice":
            OPERATOR_EVENTS.labels("edit", "notice").inc()
            log.info("operator edited a message; WhatsApp cannot edit: notice only", event_id=env.event_id)
            await self._notify(
                notice,
                None,
                "WhatsApp cannot change a message that was already sent: the customer still sees the original "
                "text. Send a new message if the correction matters.",
            )
            return Outcome.ok()
        if await self._recorded(env.event_id) is not None:
            DUPLICATES.labels("operator_message_edit").inc()
            return Outcome.duplicate()
        target = await self._target(e.external_chat_id, notice)
        original = (
            e.external_message_ids[-1]
            if e.external_message_ids
            else await self._wamid_of(e.member_id, e.bitrix_message_id)
        )
        plan = plan_message(e.text_bbcode, [], original, self.settings.correction_prefix)
        OPERATOR_EVENTS.labels("edit", "correction").inc()
        return await self._deliver(env.event_id, target, plan, notice, link=False, reengage=False)

    async def _wamid_of(self, member_id: str, bitrix_message_id: str) -> str:
        request = mapper_pb2.FindMessageLinkRequest(
            bitrix_message=mapper_pb2.PortalMessage(member_id=member_id, bitrix_message_id=bitrix_message_id)
        )
        try:
            link = await call(
                "mapper FindMessageLink",
                self.clients.mapper.FindMessageLink(request, timeout=self.clients.timeout),
            )
        except RpcNotFound:
            return ""
        return str(link.wamid)

    async def on_delete(self, env: events_pb2.Envelope, d: events_pb2.OperatorMessageDelete) -> Outcome:
        log.info(
            "operator deleted a message; WhatsApp cannot delete a sent message",
            event_id=env.event_id,
            mode=self.settings.delete_mode,
            external_message_ids=list(d.external_message_ids),
        )
        OPERATOR_EVENTS.labels("delete", self.settings.delete_mode).inc()
        if self.settings.delete_mode == "notice":
            notice = Notice(
                event_id=f"wa-fail:{d.member_id}:{d.bitrix_message_id}:delete:{_short(env.event_id)}",
                member_id=d.member_id,
                line_id=d.line_id,
                connector_id=d.connector_id,
                bitrix_chat_id=d.bitrix_chat_id,
                bitrix_message_id="",
                external_chat_id=d.external_chat_id,
            )
            await self._notify(
                notice,
                None,
                "WhatsApp cannot delete a message that was already sent: the customer can still see it.",
            )
        return Outcome.ok()

    async def on_read(self, env: events_pb2.Envelope, r: events_pb2.OperatorRead) -> Outcome:
        if not r.wamids:
            # The mapper keeps no "latest customer wamid"; without ids there is nothing to mark.
            OPERATOR_EVENTS.labels("read", "no_wamid").inc()
            log.info("operator read without message ids: nothing to mark", event_id=env.event_id)
            return Outcome.ok()
        try:
            conversation = await self._conversation(r.external_chat_id)
        except RpcNotFound:
            OPERATOR_EVENTS.labels("read", "unknown_chat").inc()
            log.warning("operator read for an unknown chat", external_chat_id=r.external_chat_id)
            return Outcome.ok()
        pnid = conversation.phone_number_id
        try:
            creds = await self.credentials.get(pnid)
        except UnknownChannel as exc:
            raise PermanentError(str(exc)) from None
        # Marking one message read marks the earlier ones too (whatsapp.md A3): mark the latest; fall back
        # to an earlier one if Meta refuses it (e.g. too old or not a customer message).
        for wamid in list(dict.fromkeys(reversed(r.wamids)))[:3]:
            try:
                await self.sender.with_retries(
                    partial(
                        self.graph.mark_read,
                        pnid,
                        creds.access_token,
                        wamid,
                        self.settings.operator_read_typing_indicator,
                    )
                )
            except (GraphApiError, GraphTransportError) as exc:
                action = classify(exc)
                if action in (Action.RETRY, Action.THROTTLE, Action.PAIR):
                    raise TransientError(
                        f"mark as read: {describe(exc)}", getattr(exc, "retry_after", None)
                    ) from exc
                if action == Action.AUTH:
                    self.credentials.invalidate(pnid)
                    TOKEN_ERRORS.labels(pnid).inc()
                    log.error(
                        "Graph API rejected the channel's access token (mark as read)", phone_number_id=pnid
                    )
                    raise PermanentError(f"mark as read: {describe(exc)}") from exc
                log.info("mark as read refused; trying an earlier message", wamid=wamid, error=describe(exc))
                continue
            OPERATOR_EVENTS.labels("read", "marked").inc()
            return Outcome.ok()
        OPERATOR_EVENTS.labels("read", "refused").inc()
        log.warning("no message of the read could be marked as read", event_id=env.event_id)
        return Outcome.ok()

    async def on_line_removed(self, lr: events_pb2.LineRemoved) -> Outcome:
        OPERATOR_EVENTS.labels("line_removed", "logged").inc()
        what = "the Bitrix24 app was uninstalled from the portal" if lr.line_id == 0 else "Open Line removed"
        log.warning(
            f"{what}: its channels no longer receive operator messages",
            member_id=lr.member_id,
            line_id=lr.line_id,
            connector_id=lr.connector_id,
        )
        self.channels.clear()  # bindings may change with the line: read them again
        return Outcome.ok()


# --- process -------------------------------------------------------------------------------------------
async def start_producer(kafka: KafkaSettings, stopped: asyncio.Event) -> EventProducer | None:
    delay = 0.5
    while not stopped.is_set():
        producer = EventProducer(kafka, client_id=SERVICE)
        try:
            await producer.start()
            return producer
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
    return None


async def run(settings: DispatcherSettings, kafka: KafkaSettings, grpc_settings: GrpcClientSettings) -> None:
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    clients = Clients(grpc_settings)
    graph = GraphClient(settings)
    consumer: EventConsumer | None = None

    async def consumer_up() -> bool:
        return consumer is not None and consumer.healthy()

    async def mapper_up() -> bool:
        return await grpc_health_check(clients.mapper_channel)()

    async def token_keeper_up() -> bool:
        return await grpc_health_check(clients.token_keeper_channel)()

    producer_box: list[EventProducer] = []

    async def kafka_up() -> bool:
        return bool(producer_box) and await producer_box[0].healthy()

    ops = await serve_ops(
        settings.dispatcher_metrics_port,
        SERVICE,
        {"consumer": consumer_up, "kafka": kafka_up, "mapper": mapper_up, "token_keeper": token_keeper_up},
    )
    dispatcher: MetaDispatcher | None = None
    try:
        producer = await start_producer(kafka, stopped)
        if producer is None:
            return
        producer_box.append(producer)
        topics = topics_for(Flow.B24_TO_WA, kafka.topic_prefix)
        dispatcher = MetaDispatcher(
            settings, clients, graph, producer, topics_for(Flow.WA_TO_B24, kafka.topic_prefix).main
        )
        consumer = EventConsumer(
            kafka,
            topics,
            settings.consumer_group,
            per_event(dispatcher.handle, settings.consumer_concurrency),
            producer,
            client_id=SERVICE,
        )
        log.info("meta-dispatcher starting", topics=topics.all(), graph=settings.graph_root)
        while not stopped.is_set():
            try:
                await consumer.run(stopped)
            except Exception as exc:  # Kafka gone mid-run: start over, offsets are committed per batch
                if stopped.is_set():
                    break
                log.error("consumer stopped unexpectedly; restarting", error=repr(exc))
                await asyncio.sleep(2.0)
        await producer.stop()
    finally:
        ops.close()
        if dispatcher is not None:
            await dispatcher.aclose()
        await graph.aclose()
        await clients.close()
        log.info("meta-dispatcher stopped")


def main() -> None:
    settings = DispatcherSettings()
    configure_logging(SERVICE, settings.log_level)
    setup_telemetry(SERVICE)
    try:
        asyncio.run(run(settings, KafkaSettings(), GrpcClientSettings()))
    finally:
        shutdown_telemetry()


__all__ = ["MetaDispatcher", "main", "to_whatsapp"]
