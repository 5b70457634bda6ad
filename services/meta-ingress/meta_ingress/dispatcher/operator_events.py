"""The operator's other events: edits and deletes (WhatsApp can do neither to a sent message: a notice, or
a correction sent as a reply), reads (mark the customer's message read), removed lines."""

from __future__ import annotations

import hashlib
from functools import partial

from zaptrix.kafka import Outcome, PermanentError, Received
from zaptrix.logging import get_logger
from zaptrix.ttlcache import NotFoundError, TtlCache
from zaptrix.v1 import events_pb2

from meta_ingress.credentials import UnknownChannel
from meta_ingress.dispatcher.context import Context
from meta_ingress.dispatcher.notices import Notice
from meta_ingress.dispatcher.operator_messages import OperatorMessages
from meta_ingress.dispatcher.send_plan import plan_message
from meta_ingress.graph.errors import (
    Action,
    GraphApiError,
    GraphTransportError,
    classify,
    describe,
    retry_later,
)
from meta_ingress.metrics import DUPLICATES, OPERATOR_EVENTS, TOKEN_ERRORS

log = get_logger(__name__)


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# Conversations whose latest customer message this process marked read: every operator reply brings an
# OperatorRead, and a second mark of the same message would be a Graph call that changes nothing.
MARKED_KEPT = 50_000
MARKED_TTL_S = 6 * 3600.0


class OperatorEvents:
    def __init__(self, ctx: Context, messages: OperatorMessages) -> None:
        self.ctx = ctx
        self.messages = messages
        self._marked: TtlCache[str, str] = TtlCache(MARKED_KEPT, MARKED_TTL_S)

    async def on_edit(self, rec: Received, e: events_pb2.OperatorMessageEdit) -> Outcome:
        env = rec.envelope
        event_id = f"wa-fail:{e.member_id}:{e.bitrix_message_id}:edit:{_short(env.event_id)}"
        if self.ctx.settings.edit_mode == "notice":
            conversation = await self.ctx.conversation(e.member_id, e.external_chat_id, "edit")
            notice = Notice.about(e, event_id, conversation, informational=True)
            OPERATOR_EVENTS.labels("edit", "notice").inc()
            log.info("operator edited a message; WhatsApp cannot edit: notice only", event_id=env.event_id)
            await self.ctx.notifier.send(
                notice,
                None,
                "WhatsApp cannot change a message that was already sent: the customer still sees the original "
                "text. Send a new message if the correction matters.",
            )
            return Outcome.ok()
        if await self.ctx.records.recorded(env.event_id) is not None:
            DUPLICATES.labels("operator_message_edit").inc()
            return Outcome.duplicate()
        target = await self.ctx.target(e.member_id, e.external_chat_id, "edit")
        notice = Notice.about(e, event_id, target.conversation, informational=True)
        original = (
            e.external_message_ids[-1]
            if e.external_message_ids
            else await self.ctx.records.wamid_of(e.member_id, e.bitrix_message_id)
        )
        plan = plan_message(e.text_bbcode, [], original, self.ctx.settings.correction_prefix)
        OPERATOR_EVENTS.labels("edit", "correction").inc()
        return await self.messages.deliver(rec, target, plan, notice, link=False, reengage=False)

    async def on_delete(self, env: events_pb2.Envelope, d: events_pb2.OperatorMessageDelete) -> Outcome:
        mode = self.ctx.settings.delete_mode
        conversation = await self.ctx.conversation(d.member_id, d.external_chat_id, "delete")
        log.info(
            "operator deleted a message; WhatsApp cannot delete a sent message",
            event_id=env.event_id,
            mode=mode,
            external_message_ids=list(d.external_message_ids),
        )
        OPERATOR_EVENTS.labels("delete", mode).inc()
        if mode == "notice":
            event_id = f"wa-fail:{d.member_id}:{d.bitrix_message_id}:delete:{_short(env.event_id)}"
            notice = Notice.about(d, event_id, conversation, informational=True)
            await self.ctx.notifier.send(
                notice,
                None,
                "WhatsApp cannot delete a message that was already sent: the customer can still see it.",
            )
        return Outcome.ok()

    async def on_read(self, env: events_pb2.Envelope, r: events_pb2.OperatorRead) -> Outcome:
        """The operator answered (or finished the dialog; Bitrix24 has no read event for connectors): the
        customer's messages are marked read on WhatsApp, the latest one (which marks the earlier ones)."""
        conversation = await self.ctx.conversation(r.member_id, r.external_chat_id, "read")
        wamids = list(r.wamids)
        if not wamids:
            latest = await self.ctx.records.latest_customer_wamid(conversation.id)
            if not latest:
                OPERATOR_EVENTS.labels("read", "no_wamid").inc()
                log.info("operator read: no customer message recorded to mark", event_id=env.event_id)
                return Outcome.ok()
            wamids = [latest]
        # Typing only ahead of a reply ("only if you are going to respond"; dismissed by it or after 25 s).
        typing = self.ctx.settings.operator_read_typing_indicator and r.replying
        if not typing and self._marked.get(conversation.id) == wamids[-1]:
            OPERATOR_EVENTS.labels("read", "already_marked").inc()
            return Outcome.ok()
        pnid = conversation.phone_number_id
        try:
            channel = await self.ctx.channels.get(pnid)
        except NotFoundError as exc:
            raise PermanentError(str(exc)) from None
        if channel.member_id != conversation.member_id:  # before the channel's token is loaded
            self.ctx.refuse(
                "read", r.member_id, r.external_chat_id, "is on a channel bound to another portal"
            )
        try:
            creds = await self.ctx.credentials.get(pnid)
        except UnknownChannel as exc:
            raise PermanentError(str(exc)) from None
        # Marking one message read marks the earlier ones too (whatsapp.md A3): mark the latest; fall back
        # to an earlier one if Meta refuses it (e.g. too old or not a customer message).
        for wamid in list(dict.fromkeys(reversed(wamids)))[:3]:
            try:
                await self.ctx.sender.with_retries(
                    partial(self.ctx.graph.mark_read, pnid, creds.access_token, wamid, typing)
                )
            except (GraphApiError, GraphTransportError) as exc:
                if (later := retry_later(exc, "mark as read")) is not None:
                    raise later from exc
                if classify(exc) == Action.AUTH:
                    self.ctx.credentials.invalidate(pnid)
                    TOKEN_ERRORS.labels(pnid).inc()
                    log.error(
                        "Graph API rejected the channel's access token (mark as read)", phone_number_id=pnid
                    )
                    raise PermanentError(f"mark as read: {describe(exc)}") from exc
                log.info("mark as read refused; trying an earlier message", wamid=wamid, error=describe(exc))
                continue
            self._marked.put(conversation.id, wamids[-1])
            OPERATOR_EVENTS.labels("read", "marked").inc()
            return Outcome.ok()
        OPERATOR_EVENTS.labels("read", "refused").inc()
        log.warning("no message of the read could be marked as read", event_id=env.event_id)
        return Outcome.ok()

    async def on_line_removed(self, env: events_pb2.Envelope) -> Outcome:
        lr = env.line_removed
        OPERATOR_EVENTS.labels("line_removed", "logged").inc()
        if lr.line_id == 0:  # the app was uninstalled: its data goes after the grace period (retention)
            await self.ctx.records.portal_uninstalled(lr.member_id, env.occurred_at)
        what = "the Bitrix24 app was uninstalled from the portal" if lr.line_id == 0 else "Open Line removed"
        log.warning(
            f"{what}: its channels no longer receive operator messages",
            member_id=lr.member_id,
            line_id=lr.line_id,
            connector_id=lr.connector_id,
        )
        self.ctx.channels.clear()  # bindings may change with the line: read them again
        return Outcome.ok()
