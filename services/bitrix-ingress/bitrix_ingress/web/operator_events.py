"""POST /webhooks/bitrix24/outbound: the operator's events in (Bitrix24's "outbound" webhook, inbound to us).

Bitrix24 never resends an event whose delivery failed or timed out, so this answers fast and never 500s;
the answers (400, 401, 403, 503 "NOT accepted") are listed in docs/bitrix-ingress.md.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import Counter
from sanic import HTTPResponse, Request, json
from zaptrix.kafka import PublishError
from zaptrix.logging import get_logger
from zaptrix.metrics import count_cross_tenant
from zaptrix.rpc import RpcFailed, RpcNotFound

from bitrix_ingress.formparse import FormError
from bitrix_ingress.metrics import EVENTS_LOST, EVENTS_RECEIVED, INSTALLS, ITEMS_SKIPPED, UNRESOLVED_CHATS
from bitrix_ingress.web import events as ev
from bitrix_ingress.web.event_summary import summary
from bitrix_ingress.web.http import problem, read_body
from bitrix_ingress.web.install import Install
from bitrix_ingress.web.resources import WebResources

log = get_logger(__name__)


async def _resolve_keys(ctx: WebResources, normalized: ev.Normalized) -> set[str]:
    """Kafka key of every pending envelope: the conversation key, from the portal's own conversation.

    Every chat is looked up as (authenticated member_id, chat id): the mapper answers NOT_FOUND for a chat
    of another portal exactly as for an unknown one. Returns the chats refused that way; the caller drops
    their envelopes. Only when the mapper cannot be asked does an envelope go out keyed by its chat id:
    the meta dispatcher then makes the same portal check before anything is sent.
    """
    member = normalized.member_id
    chats = sorted({p.external_chat_id for p in normalized.pending if p.external_chat_id and not p.key})
    keys: dict[str, str] = {}
    refused: set[str] = set()

    async def one(chat: str) -> None:
        cached = ctx.chat_keys.get((member, chat))  # scoped: one portal's answer never serves another
        if cached:
            keys[chat] = cached
            return
        try:
            conv = await ctx.deps.find_portal_conversation(member, chat)
        except RpcNotFound:
            refused.add(chat)
            return
        except RpcFailed as exc:
            UNRESOLVED_CHATS.labels("mapper_unavailable").inc()
            log.warning(
                "mapper unavailable, keying by external chat id", external_chat_id=chat, error=exc.reason
            )
            return
        if conv.member_id != member:  # the mapper scopes the lookup; this only guards against a regression
            refused.add(chat)
            return
        key = f"{conv.phone_number_id}:{conv.wa_id}"
        keys[chat] = key
        ctx.chat_keys.put((member, chat), key, 86_400.0)

    await asyncio.gather(*(one(c) for c in chats))
    for p in normalized.pending:
        p.envelope.conversation_key = p.key or keys.get(p.external_chat_id) or p.external_chat_id
    return refused


_KINDS = {
    "operator_message": "message",
    "operator_message_edit": "edit",
    "operator_message_delete": "delete",
    "operator_read": "read",
}


def _drop_refused(event: str, normalized: ev.Normalized, refused: set[str]) -> int:
    """Remove the envelopes of refused chats (and keep reply_lookups pointing at the right ones);
    count and log each. Returns how many were dropped. The message text is never logged."""
    kept: list[ev.Pending] = []
    lookups: dict[int, str] = {}
    dropped = 0
    for index, p in enumerate(normalized.pending):
        if p.external_chat_id in refused and not p.key:
            kind = _KINDS.get(p.envelope.WhichOneof("kind") or "", "other")
            count_cross_tenant("bitrix-ingress", kind)
            dropped += 1
            continue
        if index in normalized.reply_lookups:
            lookups[len(kept)] = normalized.reply_lookups[index]
        kept.append(p)
    normalized.pending, normalized.reply_lookups = kept, lookups
    for chat in sorted(refused):
        log.warning(
            "operator event refused: the chat is not a conversation of this portal (another portal's, "
            "or unknown); nothing is produced for it",
            bitrix_event=event,
            member_id=normalized.member_id,
            external_chat_id=chat,
        )
    return dropped


async def _resolve_replies(ctx: WebResources, normalized: ev.Normalized) -> None:
    """Best effort: the wamid of a quoted customer message, when Bitrix24 told us its internal id."""
    for index, reply_id in normalized.reply_lookups.items():
        env = normalized.pending[index].envelope
        try:
            link = await ctx.deps.find_message_link_by_bitrix(normalized.member_id, reply_id)
        except (RpcNotFound, RpcFailed):
            continue
        if link.wamid:
            env.operator_message.reply_to_external_id = link.wamid


def _label(event: str) -> str:
    """A bounded metric label: the event names we know, else "other" (the name comes from the caller)."""
    return event if event in ev.HANDLED or event == ev.APP_INSTALL else ("unknown" if not event else "other")


def _lost(event: str, reason: str, form: dict[str, Any], detail: str) -> HTTPResponse:
    EVENTS_RECEIVED.labels(_label(event), "unavailable").inc()
    EVENTS_LOST.labels(_label(event), reason).inc()
    log.error(
        "bitrix24 event NOT accepted; Bitrix24 will not resend it (the operator sees the message undelivered)",
        bitrix_event=summary(form),
        reason=reason,
        detail=detail,
    )
    return problem(503, f"temporarily unavailable: {reason}")


def _read(request: Request, counter: Counter) -> dict[str, Any] | HTTPResponse:
    """The form, or the 400 for what cannot be read (counted as malformed under `counter`)."""
    try:
        return read_body(request)
    except FormError as exc:
        counter.labels("unknown", "malformed").inc()
        return problem(400, str(exc))


class OperatorEvents:
    """The connector's events (POST /webhooks/bitrix24/outbound) and whatever Bitrix24 posts to the
    install URL (an install, or an uninstall event bound there)."""

    def __init__(self, resources: WebResources, install: Install) -> None:
        self.resources = resources
        self.install = install

    async def receive(self, request: Request) -> HTTPResponse:
        form = _read(request, EVENTS_RECEIVED)
        return form if isinstance(form, HTTPResponse) else await self._received(request, form)

    async def at_install_url(self, request: Request) -> HTTPResponse:
        form = _read(request, INSTALLS)
        if isinstance(form, HTTPResponse):
            return form
        if ev.event_name(form) == ev.APP_UNINSTALL:  # bound to this URL: an event like any other
            return await self._received(request, form)
        return await self.install.install(request, form)

    async def _received(self, request: Request, form: dict[str, Any]) -> HTTPResponse:
        try:
            return await self._receive(request, form)
        except Exception as exc:  # never a 500: log what identifies the event, it will not come again
            log.exception("outbound handler failed")
            return _lost(ev.event_name(form), "internal_error", form, repr(exc))

    async def _receive(self, request: Request, form: dict[str, Any]) -> HTTPResponse:
        ctx = self.resources
        event = ev.event_name(form)
        if not event:
            EVENTS_RECEIVED.labels("unknown", "malformed").inc()
            return problem(400, "no event name")
        label = _label(event)
        if event == ev.APP_INSTALL:
            return await self.install.install_portal(request, form)
        auth = ev.Auth.from_form(form)
        if not auth.member_id or not auth.application_token:
            EVENTS_RECEIVED.labels(label, "unauthorized").inc()
            return problem(401, "auth[member_id] and auth[application_token] are required")
        try:
            verdict = await ctx.verifications.verify(auth.member_id, auth.application_token)
        except RpcFailed as exc:  # token-keeper down, and no earlier verdict on this pair to go by
            return _lost(event, "token_keeper_unavailable", form, exc.reason)
        if not verdict.known_portal or not verdict.valid:
            EVENTS_RECEIVED.labels(label, "unauthorized").inc()
            log.warning(
                "bitrix24 event refused",
                bitrix_event=event,
                member_id=auth.member_id,
                known_portal=verdict.known_portal,
                stale_verdict=verdict.stale,
            )
            return problem(401, "unknown portal" if not verdict.known_portal else "wrong application_token")
        try:
            normalized = ev.normalize(
                form, auth, connector_id=ctx.settings.connector_id, read_on_reply=ctx.settings.read_on_reply
            )
        except ev.EventError as exc:
            EVENTS_RECEIVED.labels(label, "malformed").inc()
            log.warning("malformed bitrix24 event", bitrix_event=summary(form), reason=str(exc))
            return problem(400, str(exc))
        for reason in normalized.skipped:
            ITEMS_SKIPPED.labels(label).inc()
            log.warning(
                "bitrix24 event item left out", bitrix_event=event, member_id=auth.member_id, reason=reason
            )
        if not normalized.pending:
            EVENTS_RECEIVED.labels(label, "ignored").inc()
            return json({"ok": True, "events": 0})
        refused = await _resolve_keys(ctx, normalized)
        dropped = _drop_refused(event, normalized, refused) if refused else 0
        if dropped and not normalized.pending:
            EVENTS_RECEIVED.labels(label, "refused").inc()
            return problem(403, "the event names no chat of this portal")
        await _resolve_replies(ctx, normalized)
        producer = ctx.producer.producer
        if producer is None:
            return _lost(event, "kafka_unavailable", form, "producer not started")
        envelopes = [p.envelope for p in normalized.pending]
        try:
            await asyncio.wait_for(
                producer.publish(ctx.topic, envelopes), timeout=ctx.settings.publish_timeout_s
            )
        except (PublishError, TimeoutError) as exc:
            return _lost(event, "kafka_unavailable", form, repr(exc))
        EVENTS_RECEIVED.labels(label, "accepted").inc()
        for env in envelopes:
            if env.WhichOneof("kind") == "line_removed":
                removed = env.line_removed
                log.warning(
                    "bitrix24 app uninstalled"
                    if event == ev.APP_UNINSTALL
                    else "connector removed from an Open Line",
                    member_id=removed.member_id,
                    connector_id=removed.connector_id,
                    line_id=removed.line_id,
                    bitrix_event=event,
                )
        answer: dict[str, Any] = {
            "ok": True,
            "events": len(envelopes),
            "event_ids": [e.event_id for e in envelopes],
        }
        if dropped:  # a mixed event: the portal's own messages went out, the others were refused
            answer["refused"] = dropped
        return json(answer)
