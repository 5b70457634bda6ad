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
from zaptrix.rpc import RpcFailed

from bitrix_ingress.formparse import FormError
from bitrix_ingress.metrics import EVENTS_LOST, EVENTS_RECEIVED, INSTALLS, ITEMS_SKIPPED
from bitrix_ingress.operator_chats import drop_refused, resolve_keys, resolve_replies
from bitrix_ingress.web import events as ev
from bitrix_ingress.web.event_summary import summary
from bitrix_ingress.web.http import problem, read_body
from bitrix_ingress.web.install import Install
from bitrix_ingress.web.resources import WebResources

log = get_logger(__name__)


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
        refused = await resolve_keys(ctx.deps, ctx.chat_keys, normalized)
        dropped = drop_refused(event, normalized, refused) if refused else 0
        if dropped and not normalized.pending:
            EVENTS_RECEIVED.labels(label, "refused").inc()
            return problem(403, "the event names no chat of this portal")
        await resolve_replies(ctx.deps, normalized)
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
