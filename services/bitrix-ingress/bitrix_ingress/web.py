"""bitrix-ingress-web: Bitrix24 connector events in, app install and the connector settings page.

POST /webhooks/bitrix24/outbound   connector events (form-encoded): authenticate by
                                   auth[application_token], normalize, produce (acks=all), 200
POST /webhooks/bitrix24/install    ONAPPINSTALL / a UI app's install page / ONAPPUNINSTALL
POST /webhooks/bitrix24/settings   the SETTING_CONNECTOR placement (activate the connector on a line)
GET  /health /ready /metrics

Bitrix24 never resends an event whose delivery failed or timed out, so the outbound handler answers
fast and never 500s: 400 for what cannot be read, 401 for what is not genuine, 503 (with the whole
event, secrets redacted, logged at ERROR and counted in zaptrix_bitrix_events_lost_total) when
Kafka or token-keeper cannot take it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json as jsonlib
import time
from collections import OrderedDict
from typing import Any

from sanic import HTTPResponse, Request, Sanic, html, json
from sanic.exceptions import SanicException
from zaptrix.clients import Clients
from zaptrix.health import grpc_health_check
from zaptrix.kafka import EventProducer, Flow, PublishError, topics_for
from zaptrix.logging import configure_logging, get_logger
from zaptrix.settings import GrpcClientSettings, KafkaSettings
from zaptrix.telemetry import setup_telemetry, shutdown_telemetry
from zaptrix.web import add_ops_routes, instrument_sanic

from bitrix_ingress import events as ev
from bitrix_ingress.deps import Deps, NotFound, RpcFailed
from bitrix_ingress.formparse import FormError, parse_form
from bitrix_ingress.install import (
    INSTALL_PATH,
    OUTBOUND_PATH,
    SETTINGS_PATH,
    InstallRefused,
    connector_data,
    ensure_setup,
    install_finish_page,
    parse_install,
    parse_placement,
    settings_page,
    upsert_request,
    verify_install,
)
from bitrix_ingress.metrics import EVENTS_LOST, EVENTS_RECEIVED, INSTALLS, ITEMS_SKIPPED, UNRESOLVED_CHATS
from bitrix_ingress.pacing import PacerRegistry
from bitrix_ingress.portal import PortalClient, Token
from bitrix_ingress.rest import BitrixError, BitrixRest, TokenError, quiet_http_client_logs
from bitrix_ingress.settings import InsecureUrlError, WebSettings

log = get_logger(__name__)
SERVICE = "bitrix-ingress"


class TtlCache:
    """A small bounded cache with per-entry expiry (verification results, chat keys)."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._data: OrderedDict[Any, tuple[float, Any]] = OrderedDict()

    def get(self, key: Any) -> Any:
        item = self._data.get(key)
        if item is None:
            return None
        expires, value = item
        if expires < time.monotonic():
            self._data.pop(key, None)
            return None
        self._data.move_to_end(key)
        return value

    def put(self, key: Any, value: Any, ttl_s: float) -> None:
        self._data[key] = (time.monotonic() + ttl_s, value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_size:
            self._data.popitem(last=False)


class Ctx:
    """Process resources, created in before_server_start."""

    def __init__(
        self, settings: WebSettings, kafka: KafkaSettings, grpc_settings: GrpcClientSettings
    ) -> None:
        self.settings = settings
        self.kafka = kafka
        self.topic = topics_for(Flow.B24_TO_WA, kafka.topic_prefix).main
        self.producer = EventProducer(kafka, client_id="bitrix-ingress-web")
        self.producer_ready = asyncio.Event()
        self.clients = Clients(grpc_settings)
        self.deps = Deps(self.clients)
        self.rest = BitrixRest(
            timeout_s=min(settings.bitrix_rest_timeout_s, 20.0),
            connect_timeout_s=settings.bitrix_rest_connect_timeout_s,
            body=settings.bitrix_rest_body,
        )
        self.pacers = PacerRegistry(settings.rate_for)
        self.portals = PortalClient(self.deps, self.rest, self.pacers, settings, attempts=2)
        self.verified = TtlCache(10_000)
        self.chat_keys = TtlCache(100_000)
        self.starter: asyncio.Task[None] | None = None

    async def start_producer(self) -> None:
        """Keep trying: the web process must come up (and answer 503) even while Kafka is down."""
        delay = 0.5
        while True:
            try:
                await self.producer.start()
                self.producer_ready.set()
                log.info("kafka producer started", topic=self.topic)
                return
            except Exception as exc:
                log.warning("kafka producer cannot start yet", error=repr(exc), retry_s=delay)
                with contextlib.suppress(Exception):
                    await self.producer.stop()
                self.producer = EventProducer(self.kafka, client_id="bitrix-ingress-web")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)


def _ctx(request: Request) -> Ctx:
    ctx: Ctx = request.app.ctx.zx
    return ctx


def _problem(status: int, reason: str) -> HTTPResponse:
    return json({"ok": False, "error": reason}, status=status)


def _read_body(request: Request) -> dict[str, Any]:
    ctype = (request.content_type or "").split(";", 1)[0].strip().lower()
    body = request.body or b""
    if ctype == "application/json":
        try:
            data = jsonlib.loads(body)
        except ValueError as exc:
            raise FormError("body is not valid JSON") from exc
        if not isinstance(data, dict):
            raise FormError("JSON body is not an object")
        return data
    if ctype not in ("", "application/x-www-form-urlencoded"):
        raise FormError(f"unsupported content type {ctype[:60]!r}; Bitrix24 posts form-encoded events")
    return parse_form(body)


def _query(request: Request) -> dict[str, Any]:
    try:
        return parse_form(request.query_string or "")
    except FormError:
        return {}


async def _verify(ctx: Ctx, auth: ev.Auth) -> tuple[bool, bool]:
    """(known_portal, valid) for an event's member_id + application_token, cached briefly."""
    key = (auth.member_id, hashlib.sha256(auth.application_token.encode()).hexdigest())
    cached = ctx.verified.get(key)
    if cached is not None:
        known, valid = cached
        return bool(known), bool(valid)
    verdict = await ctx.deps.verify_application_token(auth.member_id, auth.application_token)
    result = (bool(verdict.known_portal), bool(verdict.valid))
    ttl = ctx.settings.verify_cache_s if result[1] else min(5.0, ctx.settings.verify_cache_s)
    if ttl > 0:
        ctx.verified.put(key, result, ttl)
    return result


async def _resolve_keys(ctx: Ctx, normalized: ev.Normalized) -> None:
    """Kafka key of every pending envelope: the conversation key from the mapper, when it knows the chat.

    An unknown chat still goes to Kafka, keyed by its external chat id: the meta dispatcher
    dead-letters it with the reason, so it is visible and replayable instead of silently dropped.
    """
    chats = sorted({p.external_chat_id for p in normalized.pending if p.external_chat_id and not p.key})
    keys: dict[str, str] = {}

    async def one(chat: str) -> None:
        cached = ctx.chat_keys.get(chat)
        if cached:
            keys[chat] = cached
            return
        try:
            conv = await ctx.deps.find_conversation_by_external(chat)
        except NotFound:
            UNRESOLVED_CHATS.labels("unknown").inc()
            log.warning("operator event for a chat the mapper does not know", external_chat_id=chat)
            return
        except RpcFailed as exc:
            UNRESOLVED_CHATS.labels("mapper_unavailable").inc()
            log.warning(
                "mapper unavailable, keying by external chat id", external_chat_id=chat, error=exc.reason
            )
            return
        key = f"{conv.phone_number_id}:{conv.wa_id}"
        keys[chat] = key
        ctx.chat_keys.put(chat, key, 86_400.0)

    await asyncio.gather(*(one(c) for c in chats))
    for p in normalized.pending:
        p.envelope.conversation_key = p.key or keys.get(p.external_chat_id) or p.external_chat_id


async def _resolve_replies(ctx: Ctx, normalized: ev.Normalized) -> None:
    """Best effort: the wamid of a quoted customer message, when Bitrix24 told us its internal id."""
    for index, reply_id in normalized.reply_lookups.items():
        env = normalized.pending[index].envelope
        try:
            link = await ctx.deps.find_message_link_by_bitrix(normalized.member_id, reply_id)
        except (NotFound, RpcFailed):
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
        bitrix_event=ev.redacted(form),
        reason=reason,
        detail=detail,
    )
    return _problem(503, f"temporarily unavailable: {reason}")


async def outbound(request: Request) -> HTTPResponse:
    try:
        form = _read_body(request)
    except FormError as exc:
        EVENTS_RECEIVED.labels("unknown", "malformed").inc()
        return _problem(400, str(exc))
    try:
        return await _outbound(request, form)
    except Exception as exc:  # never a 500: log the whole event, it will not come again
        log.exception("outbound handler failed")
        return _lost(ev.event_name(form), "internal_error", form, repr(exc))


async def _outbound(request: Request, form: dict[str, Any]) -> HTTPResponse:
    ctx = _ctx(request)
    event = ev.event_name(form)
    if not event:
        EVENTS_RECEIVED.labels("unknown", "malformed").inc()
        return _problem(400, "no event name")
    label = _label(event)
    if event == ev.APP_INSTALL:
        return await _install(request, form)
    auth = ev.Auth.from_form(form)
    if not auth.member_id or not auth.application_token:
        EVENTS_RECEIVED.labels(label, "unauthorized").inc()
        return _problem(401, "auth[member_id] and auth[application_token] are required")
    try:
        known, valid = await _verify(ctx, auth)
    except RpcFailed as exc:
        return _lost(event, "token_keeper_unavailable", form, exc.reason)
    if not known or not valid:
        EVENTS_RECEIVED.labels(label, "unauthorized").inc()
        log.warning(
            "bitrix24 event refused", bitrix_event=event, member_id=auth.member_id, known_portal=known
        )
        return _problem(401, "unknown portal" if not known else "wrong application_token")
    try:
        normalized = ev.normalize(
            form, auth, connector_id=ctx.settings.connector_id, read_on_reply=ctx.settings.read_on_reply
        )
    except ev.EventError as exc:
        EVENTS_RECEIVED.labels(label, "malformed").inc()
        log.warning("malformed bitrix24 event", bitrix_event=ev.redacted(form), reason=str(exc))
        return _problem(400, str(exc))
    for reason in normalized.skipped:
        ITEMS_SKIPPED.labels(label).inc()
        log.warning(
            "bitrix24 event item left out", bitrix_event=event, member_id=auth.member_id, reason=reason
        )
    if not normalized.pending:
        EVENTS_RECEIVED.labels(label, "ignored").inc()
        return json({"ok": True, "events": 0})
    await _resolve_keys(ctx, normalized)
    await _resolve_replies(ctx, normalized)
    if not ctx.producer_ready.is_set():
        return _lost(event, "kafka_unavailable", form, "producer not started")
    envelopes = [p.envelope for p in normalized.pending]
    try:
        await asyncio.wait_for(
            ctx.producer.publish(ctx.topic, envelopes), timeout=ctx.settings.produce_timeout_s
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
    return json({"ok": True, "events": len(envelopes), "event_ids": [e.event_id for e in envelopes]})


async def install(request: Request) -> HTTPResponse:
    try:
        form = _read_body(request)
    except FormError as exc:
        INSTALLS.labels("unknown", "malformed").inc()
        return _problem(400, str(exc))
    if ev.event_name(form) == ev.APP_UNINSTALL:  # bound to this URL: an authenticated event like any other
        return await outbound(request)
    try:
        return await _install(request, form)
    except Exception:
        log.exception("install handler failed", member_id=get_member(form))
        INSTALLS.labels("unknown", "error").inc()
        return _problem(503, "internal error, try again")


async def _install(request: Request, form: dict[str, Any]) -> HTTPResponse:
    ctx = _ctx(request)
    settings = ctx.settings
    kind = "unknown"
    try:
        req = parse_install(form, _query(request), settings)
        kind = req.kind
        stored, info = await verify_install(req, ctx.deps, ctx.portals)
        installed_flag = info.get("INSTALLED")
        first_install = stored is None or installed_flag in (False, "N", "0", 0) or req.kind == "event"
        if first_install:
            await ctx.deps.upsert_portal(upsert_request(req, settings))
            ctx.portals.forget_token(req.member_id)
            log.info("portal stored", member_id=req.member_id, domain=req.domain, kind=req.kind)
        token = Token(req.member_id, req.access_token, req.client_endpoint, req.expires_at)
        changes = await ensure_setup(req.member_id, token, ctx.portals, settings)
    except InsecureUrlError as exc:  # ZAPTRIX_PUBLIC_BASE_URL missing: Bitrix24 could not reach us anyway
        INSTALLS.labels(kind, "misconfigured").inc()
        log.error("install impossible: configuration", reason=str(exc))
        return _problem(503, str(exc))
    except InstallRefused as exc:
        INSTALLS.labels(kind, "refused").inc()
        log.warning("install refused", reason=exc.reason, member_id=get_member(form))
        return _problem(exc.status, exc.reason)
    except RpcFailed as exc:
        if exc.permanent:  # e.g. "a new portal needs: client_id, client_secret"
            INSTALLS.labels(kind, "refused_by_token_keeper").inc()
            log.error(
                "install failed: token-keeper refused the portal (set ZAPTRIX_BITRIX_CLIENT_ID/SECRET or "
                "register the app's credentials with token-keeper-admin)",
                reason=exc.reason,
                member_id=get_member(form),
            )
            return _problem(503, f"the portal could not be stored: {exc.reason}")
        INSTALLS.labels(kind, "unavailable").inc()
        log.error("install failed: token-keeper unavailable", reason=exc.reason, member_id=get_member(form))
        return _problem(503, "token-keeper unavailable, try again")
    except NotFound as exc:
        INSTALLS.labels(kind, "unavailable").inc()
        log.error("install failed", reason=exc.reason, member_id=get_member(form))
        return _problem(503, "try again")
    except BitrixError as exc:
        INSTALLS.labels(kind, "bitrix_error").inc()
        log.error("install failed: bitrix24 refused the setup", reason=exc.reason, member_id=get_member(form))
        return _problem(502, f"Bitrix24 refused the setup: {exc.code}")
    INSTALLS.labels(kind, "ok").inc()
    log.info("install done", member_id=req.member_id, changes=changes)
    if req.kind == "page":
        return html(install_finish_page(req.domain, changes))
    return json({"ok": True, "changes": changes})


def get_member(form: dict[str, Any]) -> str:
    auth = form.get("auth")
    if isinstance(auth, dict) and isinstance(auth.get("member_id"), str):
        return str(auth["member_id"])
    value = form.get("member_id")
    return value if isinstance(value, str) else ""


async def settings_handler(request: Request) -> HTTPResponse:
    ctx = _ctx(request)
    settings = ctx.settings
    try:
        form = _read_body(request)
        req = parse_placement(form, _query(request), settings)
    except FormError as exc:
        return _problem(400, str(exc))
    except InstallRefused as exc:
        return _problem(exc.status, exc.reason)
    try:
        stored = await ctx.deps.get_portal_status(req.member_id)
        if req.application_token:
            verdict = await ctx.deps.verify_application_token(req.member_id, req.application_token)
            if not verdict.valid:
                return _problem(401, "wrong APPLICATION_TOKEN")
        token = Token(req.member_id, req.auth_id, stored.client_endpoint, time.time() + 600)
        activate = req.action != "deactivate"
        await ctx.portals.call_with_token(
            req.member_id,
            token,
            "imconnector.activate",
            {"CONNECTOR": req.connector, "LINE": req.line, "ACTIVE": 1 if activate else 0},
        )
        if activate:
            await ctx.portals.call_with_token(
                req.member_id,
                token,
                "imconnector.connector.data.set",
                {"CONNECTOR": req.connector, "LINE": req.line, "DATA": connector_data(settings, req.line)},
            )
        channels: list[tuple[str, str]] = []
        with contextlib.suppress(RpcFailed, NotFound):
            listed = await ctx.deps.list_channels(req.member_id)
            channels = [
                (c.phone_number_id, c.display_phone_number) for c in listed.channels if c.line_id == req.line
            ]
    except NotFound:
        return _problem(401, "unknown portal: install the app first")
    except TokenError:
        return _problem(401, "AUTH_ID is not valid on this portal")
    except RpcFailed as exc:
        log.error("settings page: dependency failed", reason=exc.reason)
        return _problem(503, "temporarily unavailable, reload the page")
    except BitrixError as exc:
        log.error("settings page: bitrix24 refused", reason=exc.reason, member_id=req.member_id)
        return _problem(502, f"Bitrix24 refused: {exc.code}")
    INSTALLS.labels("settings", "activated" if activate else "deactivated").inc()
    log.info("connector line configured", member_id=req.member_id, line=req.line, active=activate)
    message = "Messages from the bound numbers arrive in this line." if activate else "Disconnected."
    return html(
        settings_page(settings=settings, req=req, active=activate, channels=channels, message=message)
    )


def create_app(
    settings: WebSettings,
    kafka: KafkaSettings | None = None,
    grpc_settings: GrpcClientSettings | None = None,
) -> Sanic:  # type: ignore[type-arg]
    kafka = kafka or KafkaSettings()
    grpc_settings = grpc_settings or GrpcClientSettings()
    app: Sanic = Sanic("bitrix-ingress", configure_logging=False)  # type: ignore[type-arg]
    app.config.REQUEST_MAX_SIZE = settings.web_max_body_bytes
    app.config.REQUEST_TIMEOUT = 15
    app.config.RESPONSE_TIMEOUT = 30
    app.config.FALLBACK_ERROR_FORMAT = "json"
    instrument_sanic(app)

    @app.before_server_start
    async def _start(app: Sanic) -> None:  # type: ignore[type-arg]
        zx = Ctx(settings, kafka, grpc_settings)
        app.ctx.zx = zx
        zx.starter = asyncio.create_task(zx.start_producer())

    @app.after_server_stop
    async def _stop(app: Sanic) -> None:  # type: ignore[type-arg]
        zx: Ctx = app.ctx.zx
        if zx.starter is not None:
            zx.starter.cancel()
        await zx.producer.stop()
        await zx.rest.aclose()
        await zx.clients.close()

    async def kafka_check() -> bool:
        zx: Ctx = app.ctx.zx
        return zx.producer_ready.is_set() and await zx.producer.healthy()

    async def tk_check() -> bool:
        zx: Ctx = app.ctx.zx
        return await grpc_health_check(zx.clients.token_keeper_channel)()

    async def mapper_check() -> bool:
        zx: Ctx = app.ctx.zx
        return await grpc_health_check(zx.clients.mapper_channel)()

    add_ops_routes(app, SERVICE, {"kafka": kafka_check, "token_keeper": tk_check, "mapper": mapper_check})
    app.add_route(outbound, OUTBOUND_PATH, methods=["POST"], name="outbound")
    app.add_route(install, INSTALL_PATH, methods=["POST"], name="install")
    app.add_route(settings_handler, SETTINGS_PATH, methods=["POST"], name="settings")

    @app.exception(Exception)
    async def _unhandled(request: Request, exc: Exception) -> HTTPResponse:
        if isinstance(exc, SanicException):
            status = int(exc.status_code)
            return _problem(status, str(exc) or "error")
        log.exception("unhandled error", path=request.path)
        return _problem(503, "internal error")

    return app


def main() -> None:
    settings = WebSettings()
    configure_logging(SERVICE, settings.log_level)
    quiet_http_client_logs()
    setup_telemetry(SERVICE)
    app = create_app(settings)
    try:
        app.run(
            host="0.0.0.0",
            port=settings.web_port,
            single_process=True,
            access_log=False,
            motd=False,
        )
    finally:
        shutdown_telemetry()


if __name__ == "__main__":
    main()
