"""The customer's 24-hour window: the pre-check before a send, the operator's notice when it is closed, the
channel's re-engagement template (at most once per conversation per cooldown period), and WindowClosed —
Meta's 131047 reported after it had accepted a send (a failed status, forwarded by the web part)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from zaptrix.kafka import Outcome, PermanentError, Received
from zaptrix.logging import get_logger
from zaptrix.rpc import RpcNotFound
from zaptrix.ttlcache import NotFoundError
from zaptrix.v1 import events_pb2, mapper_pb2

from meta_ingress.credentials import UnknownChannel
from meta_ingress.dispatcher.context import WINDOW_S, Context, Target
from meta_ingress.dispatcher.notices import Notice, graph_error, window_error
from meta_ingress.dispatcher.send_plan import template_payload
from meta_ingress.graph.errors import GraphApiError, GraphTransportError, describe, notice_for, retry_later
from meta_ingress.metrics import DUPLICATES, OPERATOR_EVENTS, TEMPLATES

log = get_logger(__name__)


@dataclass
class Reengagement:
    """What became of the re-engagement template: none (not configured), sent, cooldown, failed or opted_out
    (a marketing template to a customer who stopped marketing messages); ``text``
    is the sentence for the operator's notice."""

    outcome: str
    text: str = ""

    @property
    def sent(self) -> bool:
        return self.outcome == "sent"


class Window:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def closed_by_record(self, conversation: mapper_pb2.Conversation) -> bool:
        """The pre-check: the conversation's last customer message is known and older than 24 h."""
        if not self.ctx.settings.window_precheck or not conversation.HasField("last_customer_message_at"):
            return False
        return time.time() - conversation.last_customer_message_at.seconds >= WINDOW_S

    async def failure(
        self, rec: Received, target: Target, notice: Notice, exc: GraphApiError | None, reengage: bool
    ) -> None:
        """Tell the operator their message was not sent (known before sending, or Meta's synchronous
        131047 in ``exc``), sending the re-engagement template first when ``reengage``."""
        error = (
            graph_error(exc)
            if exc is not None
            else window_error(
                "More than 24 hours have passed since the customer last replied (known before sending).",
                "The last customer message of this conversation is older than 24 hours.",
            )
        )
        text = notice_for(GraphApiError(400, 131047, error.message))
        outcome = await self.reengage(rec, target) if reengage else Reengagement("none")
        await self.ctx.notifier.send(notice, error, text + outcome.text, template_sent=outcome.sent)

    async def reengage(self, rec: Received, target: Target) -> Reengagement:
        """Send the channel's re-engagement template, at most once per conversation per cooldown period."""
        name = target.channel.reengagement_template
        if not name:
            return Reengagement("none")
        records, event_id = self.ctx.records, rec.envelope.event_id
        if self.ctx.settings.is_marketing_template(name) and await records.marketing_stopped(
            target.phone_number_id, target.wa_id
        ):
            TEMPLATES.labels("opted_out").inc()
            log.info("marketing template refused: the customer stopped marketing messages", template=name)
            return Reengagement(
                "opted_out",
                f" The re-engagement template “{name}” is a marketing template and the customer stopped"
                " marketing messages on WhatsApp, so it was not sent.",
            )
        sent_text = f" The re-engagement template “{name}” was sent; write again once the customer replies."
        prefix = f"wa-reengage:{target.phone_number_id}:{target.wa_id}:"
        bucket = int(time.time()) // self.ctx.settings.template_cooldown_s
        # An earlier attempt of this event keeps its period's key (the period may have turned since).
        key = next((k for k in rec.effects if k.startswith(prefix)), f"{prefix}{bucket}")
        ours = key in rec.effects
        done = await self.ctx.once.prior(rec, key, target.phone_number_id, recorded=True)
        if done is not None:
            if ours or done.endswith(f" {event_id}"):  # this event sent it before a retry
                if ours:  # noted, perhaps never recorded
                    await records.mark(key, f"{done.split(' ', 1)[0]} {event_id}")
                return Reengagement("sent", sent_text)
            TEMPLATES.labels("cooldown").inc()
            return Reengagement(
                "cooldown",
                " A re-engagement template was already sent recently; the customer needs to reply first.",
            )
        payload = template_payload(target.address, name, target.channel.template_language)
        try:
            wamid = await self.ctx.once.send(
                rec, target.phone_number_id, target.wa_id, key, target.creds.access_token, payload
            )
        except (GraphApiError, GraphTransportError) as exc:
            if (later := retry_later(exc, "re-engagement template")) is not None:
                raise later from exc
            TEMPLATES.labels("failed").inc()
            log.warning("re-engagement template refused", template=name, error=describe(exc))
            return Reengagement(
                "failed", f" The re-engagement template “{name}” could not be sent ({describe(exc)})."
            )
        await records.mark(key, f"{wamid} {event_id}")
        TEMPLATES.labels("sent").inc()
        log.info("re-engagement template sent", template=name, wamid=wamid)
        return Reengagement("sent", sent_text)

    async def on_window_closed(self, rec: Received, wc: events_pb2.WindowClosed) -> Outcome:
        """Meta reported 131047 for a send it had accepted (a failed status, forwarded by the web part).
        The operator's notice comes from the WhatsAppStatus; here only the re-engagement template is sent,
        and the operator is told when it was (or could not be)."""
        event_id = rec.envelope.event_id
        if await self.ctx.records.recorded(event_id) is not None:
            DUPLICATES.labels("window_closed").inc()
            return Outcome.duplicate()
        outcome = await self._template_after_send(rec, wc)
        OPERATOR_EVENTS.labels("window_closed", outcome).inc()
        log.info("24-h window closed after a send", event_id=event_id, wamid=wc.wamid, outcome=outcome)
        await self.ctx.records.mark(event_id, outcome)
        return Outcome.ok()

    async def _template_after_send(self, rec: Received, wc: events_pb2.WindowClosed) -> str:
        """What happened after an asynchronous 131047: the outcome label (also the dedupe record)."""
        pnid = wc.phone_number_id
        try:
            conversation = await self.ctx.records.conversation_of(pnid, wc.wa_id)
        except RpcNotFound:
            log.info("closed window in a conversation we do not know", wamid=wc.wamid, phone_number_id=pnid)
            return "unknown_conversation"
        try:
            channel = await self.ctx.channels.get(pnid)
        except NotFoundError:
            log.warning("closed window on a channel without binding", phone_number_id=pnid)
            return "unknown_channel"
        if channel.member_id != conversation.member_id:  # before the channel's token is loaded
            Context.refuse(
                "template",
                conversation.member_id,
                conversation.external_chat_id,
                "is on a channel bound to another portal",
            )
        if not channel.reengagement_template:
            return "no_template"  # the operator already has the notice (from the failed status)
        if not channel.active:
            return "channel_inactive"
        try:
            creds = await self.ctx.credentials.get(pnid)
        except UnknownChannel as exc:
            raise PermanentError(str(exc)) from None
        target = Target(conversation, channel, creds)
        result = await self.reengage(rec, target)
        if result.outcome == "cooldown":
            return "cooldown"
        # informational: the failed message itself was reported by its status
        notice = Notice.for_conversation(
            conversation,
            f"wa-fail:{conversation.member_id}:window:{wc.wamid}",
            channel.line_id,
            channel.connector_id,
        )
        error = window_error(
            "More than 24 hours have passed since the customer last replied (reported after the send).",
            "WhatsApp accepted the message, then reported it failed with 131047.",
        )
        text = "WhatsApp did not deliver a message: the customer last wrote more than 24 hours ago."
        await self.ctx.notifier.send(notice, error, text + result.text, template_sent=result.sent)
        return "template_sent" if result.sent else "template_failed"
