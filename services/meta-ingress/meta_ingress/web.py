"""meta-ingress-web: Meta's webhooks in, the signed media proxy out.

POST /webhooks/meta      raw body → channels → X-Hub-Signature-256 → one event per message/status →
                         Kafka (acks=all) → 200. A failed status with 131047 also becomes a WindowClosed
                         for the meta dispatcher. Never a 500 for what Meta (or anyone) sends.
GET  /webhooks/meta      Meta's verification handshake.
GET  /media/<pnid>/<id>  signed, expiring URL (what Bitrix24 downloads) → Graph media lookup → stream.
/health /ready /metrics  zaptrix.web.add_ops_routes.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

from prometheus_client import Counter
from sanic import HTTPResponse, Request, Sanic
from sanic import json as json_response
from sanic.config import Config
from sanic.response import empty, raw
from zaptrix.clients import Clients
from zaptrix.health import grpc_health_check
from zaptrix.kafka import EventProducer, Flow, PublishError, TransientError, topics_for
from zaptrix.logging import configure_logging, get_logger
from zaptrix.settings import GrpcClientSettings, KafkaSettings
from zaptrix.telemetry import setup_telemetry, shutdown_telemetry
from zaptrix.web import add_ops_routes, instrument_sanic

from meta_ingress import media_url, signature
from meta_ingress.credentials import Credentials, CredentialsCache, UnknownChannel
from meta_ingress.graph import GraphApiError, GraphClient, GraphTransportError
from meta_ingress.metrics import (
    IGNORED_CHANGES,
    INBOUND_MESSAGES,
    INBOUND_STATUSES,
    MEDIA_PROXY,
    MEDIA_PROXY_BYTES,
    SIGNATURE_FAILURES,
    VERIFICATIONS,
    WEBHOOK_SYSTEM_ERRORS,
    WEBHOOKS,
)
from meta_ingress.normalize import WebhookShapeError, normalize, parse_envelope
from meta_ingress.settings import WebSettings

SERVICE = "meta-ingress"
App = Sanic[Config, SimpleNamespace]
log = get_logger(__name__)

_SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


_children: dict[tuple[int, str], Any] = {}


def _child(metric: Counter, label: str) -> Any:
    """A labelled child, cached: .labels() costs a lock and a tuple build on every webhook."""
    key = (id(metric), label)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(label)
    return child


def _error(status: int, reason: str, **extra: Any) -> HTTPResponse:
    return json_response({"error": reason, **extra}, status=status, headers=_SECURITY_HEADERS)


class ProducerHolder:
    """Starts the Kafka producer in the background and keeps retrying: the web process comes up (and
    answers 503, so Meta retries) even while Kafka is unreachable."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self.producer: EventProducer | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        delay = 0.5
        while True:
            producer = EventProducer(self.settings, client_id=SERVICE)
            try:
                await producer.start()
            except Exception as exc:
                log.warning("Kafka not reachable yet, retrying", error=repr(exc), delay_s=delay)
                try:
                    await producer.stop()
                except Exception:  # noqa: S110 - a half-started producer may not stop cleanly
                    pass
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self.producer = producer
            log.info("Kafka producer started", bootstrap=self.settings.bootstrap_servers)
            return

    async def healthy(self) -> bool:
        return self.producer is not None and await self.producer.healthy()

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.producer is not None:
            await self.producer.stop()


class Webhooks:
    """The handlers; resources are created in before_server_start (one event loop, one worker)."""

    def __init__(
        self, settings: WebSettings, kafka: KafkaSettings, grpc_settings: GrpcClientSettings
    ) -> None:
        self.settings = settings
        self.kafka = kafka
        self.grpc_settings = grpc_settings
        self.topic = topics_for(Flow.WA_TO_B24, kafka.topic_prefix).main
        self.window_topic = topics_for(Flow.B24_TO_WA, kafka.topic_prefix).main
        self.media_secret = settings.media_secret_bytes()
        self.clients: Clients
        self.credentials: CredentialsCache
        self.graph: GraphClient
        self.producer = ProducerHolder(kafka)

    async def start(self) -> None:
        self.clients = Clients(self.grpc_settings)
        self.credentials = CredentialsCache(self.clients, self.settings)
        self.graph = GraphClient(self.settings)
        self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()
        await self.graph.aclose()
        await self.clients.close()

    # --- GET /webhooks/meta --------------------------------------------------------------------------
    async def verify(self, request: Request) -> HTTPResponse:
        mode = request.args.get("hub.mode")
        token = request.args.get("hub.verify_token")
        challenge = request.args.get("hub.challenge")
        if not mode or not token or challenge is None:
            VERIFICATIONS.labels("bad_request").inc()
            return _error(400, "hub.mode, hub.verify_token and hub.challenge are required")
        if mode != "subscribe":
            VERIFICATIONS.labels("bad_request").inc()
            return _error(400, "hub.mode must be subscribe")
        if len(challenge) > 1024:
            VERIFICATIONS.labels("bad_request").inc()
            return _error(400, "hub.challenge is too long")
        try:
            valid = await self.credentials.check_verify_token(token)
        except Exception as exc:
            VERIFICATIONS.labels("unavailable").inc()
            log.warning("verify token check failed", error=str(exc))
            return _error(503, "token-keeper unavailable; try again")
        if not valid:
            VERIFICATIONS.labels("forbidden").inc()
            log.warning("webhook verification with an unknown verify token")
            return _error(403, "verify token does not match")
        VERIFICATIONS.labels("ok").inc()
        log.info("webhook verification answered")
        return raw(challenge.encode(), content_type="text/plain; charset=utf-8", headers=_SECURITY_HEADERS)

    # --- POST /webhooks/meta -------------------------------------------------------------------------
    async def receive(self, request: Request) -> HTTPResponse:
        body: bytes = request.body or b""
        digest = signature.parse_header(request.headers.get("x-hub-signature-256"))
        if digest is None:
            WEBHOOKS.labels("missing_signature").inc()
            SIGNATURE_FAILURES.labels("missing").inc()
            return _error(401, "missing or malformed X-Hub-Signature-256 header")
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            WEBHOOKS.labels("malformed").inc()
            return _error(400, "the body is not valid JSON")
        try:
            hook = parse_envelope(payload)
        except (WebhookShapeError, RecursionError) as exc:
            WEBHOOKS.labels("malformed").inc()
            return _error(400, f"not a WhatsApp Cloud API webhook: {exc}")
        except Exception:  # a bug of ours must not turn garbage into a 500 loop
            WEBHOOKS.labels("malformed").inc()
            log.exception("webhook envelope could not be read")
            return _error(400, "not a WhatsApp Cloud API webhook")
        for fld in hook.ignored_fields:
            IGNORED_CHANGES.labels(fld[:40]).inc()
        channels = hook.channels
        if not channels:
            return self._without_channel(body, digest, len(hook.ignored_fields))
        found = await self._credentials(channels)
        if isinstance(found, HTTPResponse):
            return found
        for creds in found:
            if not creds.app_secret:
                WEBHOOKS.labels("bad_signature").inc()
                SIGNATURE_FAILURES.labels("no_app_secret").inc()
                log.error(
                    "channel has no app secret: cannot verify its webhooks",
                    phone_number_id=creds.phone_number_id,
                )
                return _error(
                    401, "no app secret is configured for this channel", phone_number_id=creds.phone_number_id
                )
            if not signature.verify(creds.app_secret, body, digest):
                WEBHOOKS.labels("bad_signature").inc()
                SIGNATURE_FAILURES.labels("mismatch").inc()
                log.warning("webhook signature mismatch", phone_number_id=creds.phone_number_id)
                return _error(401, "X-Hub-Signature-256 does not match the body")
        try:
            result = normalize(hook, self._media_url)
        except (WebhookShapeError, RecursionError) as exc:
            WEBHOOKS.labels("malformed").inc()
            log.warning("signed webhook with an unreadable item", reason=str(exc))
            return _error(400, f"unreadable webhook item: {exc}")
        except Exception:  # Meta keeps a refused webhook and retries it: nothing is lost while we fix this
            WEBHOOKS.labels("malformed").inc()
            log.exception("signed webhook could not be normalized")
            return _error(400, "unreadable webhook item")
        for pnid, code, title, details in result.system_errors:
            WEBHOOK_SYSTEM_ERRORS.labels(str(code)).inc()
            log.error("Meta reported an error", phone_number_id=pnid, code=code, title=title, details=details)
        if result.envelopes:
            producer = self.producer.producer
            if producer is None:
                WEBHOOKS.labels("kafka_unavailable").inc()
                return _error(503, "Kafka is not reachable; Meta will retry")
            try:
                async with asyncio.timeout(self.settings.publish_timeout_s):  # no extra task, unlike wait_for
                    await producer.publish(self.topic, result.envelopes)
                    if result.window_closed:  # for the meta dispatcher: the re-engagement template
                        await producer.publish(self.window_topic, result.window_closed)
            except (PublishError, TimeoutError) as exc:
                WEBHOOKS.labels("kafka_unavailable").inc()
                log.warning(
                    "events not accepted by Kafka; answering 503", error=str(exc), events=result.count
                )
                return _error(503, "Kafka did not accept the events; Meta will retry")
            for env in result.window_closed:
                log.info(
                    "Meta reported the 24-h window closed after accepting a send",
                    wamid=env.window_closed.wamid,
                    phone_number_id=env.window_closed.phone_number_id,
                )
        for kind in result.types:
            _child(INBOUND_MESSAGES, kind[:40]).inc()
        if result.statuses:
            for env in result.envelopes:
                if env.HasField("whatsapp_status"):
                    _child(INBOUND_STATUSES, env.whatsapp_status.status[:20]).inc()
        _child(WEBHOOKS, "ok").inc()
        return json_response({"events": result.count})

    async def _credentials(self, channels: list[str]) -> list[Credentials] | HTTPResponse:
        results: list[Credentials | BaseException]
        if len(channels) == 1:  # the usual case: no gather, no tasks
            try:
                results = [await self.credentials.get(channels[0])]
            except Exception as exc:
                results = [exc]
        else:
            results = await asyncio.gather(
                *(self.credentials.get(p) for p in channels), return_exceptions=True
            )
        found: list[Credentials] = []
        for pnid, result in zip(channels, results, strict=True):
            if isinstance(result, UnknownChannel):
                WEBHOOKS.labels("unknown_channel").inc()
                log.warning("webhook for an unknown channel", phone_number_id=pnid)
                # 404 and not 200: Meta keeps the webhook and retries for days, so messages that arrive
                # before the channel is set up are delivered once it is.
                return _error(
                    404, "unknown channel: no credentials for this phone_number_id", phone_number_id=pnid
                )
            if isinstance(result, BaseException):
                WEBHOOKS.labels("dependency_unavailable").inc()
                level = log.warning if isinstance(result, TransientError) else log.error
                level("cannot load channel credentials", phone_number_id=pnid, error=str(result))
                return _error(503, "credentials unavailable; Meta will retry")
            found.append(result)
        return found

    def _without_channel(self, body: bytes, digest: bytes, ignored: int) -> HTTPResponse:
        """A webhook naming no channel (only fields we do not handle, or no entries): nothing to produce.
        Answer 200 when it is signed by the app secret of a channel we know, so Meta does not retry it."""
        if any(signature.verify(s, body, digest) for s in self.credentials.known_app_secrets()):
            WEBHOOKS.labels("ignored").inc()
            return json_response({"events": 0, "ignored_changes": ignored})
        WEBHOOKS.labels("bad_signature").inc()
        SIGNATURE_FAILURES.labels("no_channel").inc()
        return _error(401, "cannot authenticate a webhook that names no known channel")

    def _media_url(self, phone_number_id: str, media_id: str, filename: str) -> str:
        return media_url.sign_url(
            self.settings.public_base_url,
            self.media_secret,
            phone_number_id,
            media_id,
            filename,
            self.settings.media_url_ttl_s,
        )

    # --- GET /media/<phone_number_id>/<media_id> -------------------------------------------------------
    async def media(self, request: Request, phone_number_id: str, media_id: str) -> HTTPResponse | None:
        args = request.args
        try:
            grant = media_url.check(
                self.media_secret, phone_number_id, media_id, args.get("exp"), args.get("fn"), args.get("sig")
            )
        except media_url.MediaUrlError as exc:
            MEDIA_PROXY.labels("expired" if str(exc) == "expired" else "forbidden").inc()
            return _error(403, f"media URL refused: {exc}")
        try:
            creds = await self.credentials.get(phone_number_id)
            info = await self.graph.media_info(media_id, creds.access_token, phone_number_id)
        except UnknownChannel:
            MEDIA_PROXY.labels("not_found").inc()
            return _error(404, "unknown channel")
        except GraphApiError as exc:
            return self._media_error(exc, phone_number_id)
        except (GraphTransportError, TransientError) as exc:
            MEDIA_PROXY.labels("upstream_error").inc()
            log.warning("media lookup failed", media_id=media_id, error=str(exc))
            return _error(502, "the Graph API did not answer the media lookup")
        headers = {
            "Content-Disposition": _disposition(grant.filename),
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, max-age=3600",
        }
        content_type = info.mime_type or "application/octet-stream"
        if request.method == "HEAD":
            if info.file_size:
                headers["Content-Length"] = str(info.file_size)
            MEDIA_PROXY.labels("ok").inc()
            return empty(status=200, headers={**headers, "Content-Type": content_type})
        try:
            async with self.graph.download(
                info.url, creds.access_token, self.settings.media_download_timeout_s
            ) as upstream:
                content_type = upstream.headers.get("content-type") or content_type
                length = upstream.headers.get("content-length")
                if length and length.isdigit():
                    headers["Content-Length"] = length
                response = await request.respond(status=200, headers=headers, content_type=content_type)
                if response is None:  # pragma: no cover - only when another response was already sent
                    return None
                sent = 0
                try:
                    async for chunk in upstream.aiter_bytes(self.settings.media_chunk_bytes):
                        await response.send(chunk)
                        sent += len(chunk)
                except Exception as exc:
                    # Headers are out: the only honest signal left is an incomplete body (closed early).
                    MEDIA_PROXY.labels("upstream_error").inc()
                    log.warning("media stream broke off", media_id=media_id, sent=sent, error=repr(exc))
                    raise
                finally:
                    MEDIA_PROXY_BYTES.inc(sent)
                await response.eof()
        except GraphApiError as exc:
            return self._media_error(exc, phone_number_id)
        except GraphTransportError as exc:
            MEDIA_PROXY.labels("upstream_error").inc()
            log.warning("media download failed", media_id=media_id, error=str(exc))
            return _error(502, "the media download from Meta failed")
        MEDIA_PROXY.labels("ok").inc()
        return None

    def _media_error(self, exc: GraphApiError, phone_number_id: str) -> HTTPResponse:
        if exc.http_status == 404 or exc.subcode == 33 or (exc.code == 100 and exc.http_status == 400):
            MEDIA_PROXY.labels("not_found").inc()
            return _error(404, "media not found (media ids from webhooks expire after 7 days)")
        if exc.code in (0, 190) or exc.http_status == 401:
            self.credentials.invalidate(phone_number_id)
            log.error(
                "Graph API rejected the channel's token for a media lookup", phone_number_id=phone_number_id
            )
        MEDIA_PROXY.labels("upstream_error").inc()
        log.warning(
            "media lookup refused", code=exc.code, http_status=exc.http_status, detail=exc.message[:200]
        )
        return _error(502, f"the Graph API refused the media request ({exc.label})")


def _disposition(filename: str) -> str:
    ascii_name = filename.encode("ascii", "replace").decode().replace("?", "_").replace('"', "_")
    return f"inline; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


def create_app(
    settings: WebSettings | None = None,
    kafka: KafkaSettings | None = None,
    grpc_settings: GrpcClientSettings | None = None,
    name: str = "meta_ingress",
) -> App:
    settings = settings or WebSettings()
    kafka = kafka or KafkaSettings()
    grpc_settings = grpc_settings or GrpcClientSettings()
    app: App = Sanic(name, configure_logging=False)  # zaptrix.logging owns the handlers (JSON lines)
    app.config.ACCESS_LOG = False
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.REQUEST_MAX_SIZE = settings.webhook_max_bytes
    app.config.KEEP_ALIVE_TIMEOUT = 75  # Meta and Bitrix24 reuse connections; be longer than their idle time
    app.config.REQUEST_TIMEOUT = 30
    app.config.RESPONSE_TIMEOUT = max(60, int(settings.media_download_timeout_s) + 10)
    app.config.MOTD = False
    hooks = Webhooks(settings, kafka, grpc_settings)
    app.ctx.hooks = hooks

    @app.before_server_start
    async def _start(app: App) -> None:
        await hooks.start()

    @app.after_server_stop
    async def _stop(app: App) -> None:
        await hooks.stop()

    instrument_sanic(app)

    async def token_keeper_up() -> bool:
        return await grpc_health_check(hooks.clients.token_keeper_channel)()

    add_ops_routes(app, SERVICE, checks={"kafka": hooks.producer.healthy, "token_keeper": token_keeper_up})
    app.add_route(hooks.verify, "/webhooks/meta", methods=["GET"], name="webhook_verify")
    app.add_route(hooks.receive, "/webhooks/meta", methods=["POST"], name="webhook_receive")
    app.add_route(
        hooks.media,
        "/media/<phone_number_id:str>/<media_id:str>",
        methods=["GET", "HEAD"],
        name="media",
    )
    return app


def main() -> None:
    settings = WebSettings()
    configure_logging(SERVICE, settings.log_level)
    setup_telemetry(SERVICE)
    app = create_app(settings)
    log.info("meta-ingress-web starting", port=settings.web_port, graph=settings.graph_root)
    try:
        app.run(
            host=settings.web_host,
            port=settings.web_port,
            single_process=True,
            access_log=False,
            motd=False,
        )
    finally:
        shutdown_telemetry()


__all__ = ["create_app", "main"]
