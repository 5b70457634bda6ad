"""Meta's webhooks: the verification handshake (GET) and the events (POST).

POST: raw body → channels → X-Hub-Signature-256 → one event per message/status → Kafka (acks=all) → 200. A
failed status with 131047 also becomes a WindowClosed for the meta dispatcher (b24-to-wa flow), published
before the 200 as well. Never a 500 for what Meta (or anyone) sends. See docs/meta-ingress.md.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter
from sanic import HTTPResponse, Request
from sanic import json as json_response
from sanic.response import raw
from zaptrix.kafka import Flow, PublishError, TransientError, topics_for
from zaptrix.logging import get_logger
from zaptrix.settings import KafkaSettings

from meta_ingress import media_url, signature
from meta_ingress.credentials import Credentials, CredentialsCache, UnknownChannel
from meta_ingress.metrics import (
    IGNORED_CHANGES,
    INBOUND_MESSAGES,
    INBOUND_STATUSES,
    SIGNATURE_FAILURES,
    VERIFICATIONS,
    WEBHOOK_SYSTEM_ERRORS,
    WEBHOOKS,
)
from meta_ingress.normalize import Normalized, WebhookShapeError, normalize, parse_envelope
from meta_ingress.responses import SECURITY_HEADERS, error_response
from meta_ingress.settings import WebSettings

if TYPE_CHECKING:
    from meta_ingress.web import WebResources

log = get_logger(__name__)

_children: dict[tuple[int, str], Any] = {}


def _child(metric: Counter, label: str) -> Any:
    """A labelled child, cached: .labels() costs a lock and a tuple build on every webhook."""
    key = (id(metric), label)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(label)
    return child


class Webhooks:
    def __init__(self, settings: WebSettings, kafka: KafkaSettings, resources: WebResources) -> None:
        self.settings = settings
        self.resources = resources
        self.topic = topics_for(Flow.WA_TO_B24, kafka.topic_prefix).main
        self.window_topic = topics_for(Flow.B24_TO_WA, kafka.topic_prefix).main
        self.media_secret = settings.media_secret_bytes()

    @property
    def credentials(self) -> CredentialsCache:
        return self.resources.credentials

    # --- GET /webhooks/meta --------------------------------------------------------------------------
    async def verify(self, request: Request) -> HTTPResponse:
        mode = request.args.get("hub.mode")
        token = request.args.get("hub.verify_token")
        challenge = request.args.get("hub.challenge")
        if not mode or not token or challenge is None:
            VERIFICATIONS.labels("bad_request").inc()
            return error_response(400, "hub.mode, hub.verify_token and hub.challenge are required")
        if mode != "subscribe":
            VERIFICATIONS.labels("bad_request").inc()
            return error_response(400, "hub.mode must be subscribe")
        if len(challenge) > 1024:
            VERIFICATIONS.labels("bad_request").inc()
            return error_response(400, "hub.challenge is too long")
        try:
            valid = await self.credentials.check_verify_token(token)
        except Exception as exc:
            VERIFICATIONS.labels("unavailable").inc()
            log.warning("verify token check failed", error=str(exc))
            return error_response(503, "token-keeper unavailable; try again")
        if not valid:
            VERIFICATIONS.labels("forbidden").inc()
            log.warning("webhook verification with an unknown verify token")
            return error_response(403, "verify token does not match")
        VERIFICATIONS.labels("ok").inc()
        log.info("webhook verification answered")
        return raw(challenge.encode(), content_type="text/plain; charset=utf-8", headers=SECURITY_HEADERS)

    # --- POST /webhooks/meta -------------------------------------------------------------------------
    async def receive(self, request: Request) -> HTTPResponse:
        body: bytes = request.body or b""
        digest = signature.parse_header(request.headers.get("x-hub-signature-256"))
        if digest is None:
            WEBHOOKS.labels("missing_signature").inc()
            SIGNATURE_FAILURES.labels("missing").inc()
            return error_response(401, "missing or malformed X-Hub-Signature-256 header")
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            WEBHOOKS.labels("malformed").inc()
            return error_response(400, "the body is not valid JSON")
        try:
            hook = parse_envelope(payload)
        except (WebhookShapeError, RecursionError) as exc:
            WEBHOOKS.labels("malformed").inc()
            return error_response(400, f"not a WhatsApp Cloud API webhook: {exc}")
        except Exception:  # a bug of ours must not turn garbage into a 500 loop
            WEBHOOKS.labels("malformed").inc()
            log.exception("webhook envelope could not be read")
            return error_response(400, "not a WhatsApp Cloud API webhook")
        for fld in hook.ignored_fields:
            IGNORED_CHANGES.labels(fld[:40]).inc()
        channels = hook.channels
        if not channels:
            return self._without_channel(body, digest, len(hook.ignored_fields))
        found = await self._credentials(channels)
        if isinstance(found, HTTPResponse):
            return found
        refused = self._check_signatures(found, body, digest)
        if refused is not None:
            return refused
        try:
            result = normalize(hook, self._media_url)
        except (WebhookShapeError, RecursionError) as exc:
            WEBHOOKS.labels("malformed").inc()
            log.warning("signed webhook with an unreadable item", reason=str(exc))
            return error_response(400, f"unreadable webhook item: {exc}")
        except Exception:  # Meta keeps a refused webhook and retries it: nothing is lost while we fix this
            WEBHOOKS.labels("malformed").inc()
            log.exception("signed webhook could not be normalized")
            return error_response(400, "unreadable webhook item")
        for pnid, code, title, details in result.system_errors:
            WEBHOOK_SYSTEM_ERRORS.labels(str(code)).inc()
            log.error("Meta reported an error", phone_number_id=pnid, code=code, title=title, details=details)
        if result.envelopes:
            refused = await self._publish(result)
            if refused is not None:
                return refused
        for kind in result.types:
            _child(INBOUND_MESSAGES, kind[:40]).inc()
        if result.statuses:
            for env in result.envelopes:
                if env.HasField("whatsapp_status"):
                    _child(INBOUND_STATUSES, env.whatsapp_status.status[:20]).inc()
        _child(WEBHOOKS, "ok").inc()
        return json_response({"events": result.count})

    def _check_signatures(self, found: list[Credentials], body: bytes, digest: bytes) -> HTTPResponse | None:
        """The 401 when the raw body is not signed with the app secret of every channel it names."""
        for creds in found:
            if not creds.app_secret:
                WEBHOOKS.labels("bad_signature").inc()
                SIGNATURE_FAILURES.labels("no_app_secret").inc()
                log.error(
                    "channel has no app secret: cannot verify its webhooks",
                    phone_number_id=creds.phone_number_id,
                )
                return error_response(
                    401, "no app secret is configured for this channel", phone_number_id=creds.phone_number_id
                )
            if not signature.verify(creds.app_secret, body, digest):
                WEBHOOKS.labels("bad_signature").inc()
                SIGNATURE_FAILURES.labels("mismatch").inc()
                log.warning("webhook signature mismatch", phone_number_id=creds.phone_number_id)
                return error_response(401, "X-Hub-Signature-256 does not match the body")
        return None

    async def _publish(self, result: Normalized) -> HTTPResponse | None:
        """Every event acknowledged by Kafka within the deadline, else the 503 (Meta retries)."""
        producer = self.resources.producer.producer
        if producer is None:
            WEBHOOKS.labels("kafka_unavailable").inc()
            return error_response(503, "Kafka is not reachable; Meta will retry")
        try:
            async with asyncio.timeout(self.settings.publish_timeout_s):  # no extra task, unlike wait_for
                await producer.publish(self.topic, result.envelopes)
                if result.window_closed:  # for the meta dispatcher: the re-engagement template
                    await producer.publish(self.window_topic, result.window_closed)
        except (PublishError, TimeoutError) as exc:
            WEBHOOKS.labels("kafka_unavailable").inc()
            log.warning("events not accepted by Kafka; answering 503", error=str(exc), events=result.count)
            return error_response(503, "Kafka did not accept the events; Meta will retry")
        for env in result.window_closed:
            log.info(
                "Meta reported the 24-h window closed after accepting a send",
                wamid=env.window_closed.wamid,
                phone_number_id=env.window_closed.phone_number_id,
            )
        return None

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
                return error_response(
                    404, "unknown channel: no credentials for this phone_number_id", phone_number_id=pnid
                )
            if isinstance(result, BaseException):
                WEBHOOKS.labels("dependency_unavailable").inc()
                level = log.warning if isinstance(result, TransientError) else log.error
                level("cannot load channel credentials", phone_number_id=pnid, error=str(result))
                return error_response(503, "credentials unavailable; Meta will retry")
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
        return error_response(401, "cannot authenticate a webhook that names no known channel")

    def _media_url(self, phone_number_id: str, media_id: str, filename: str) -> str:
        return media_url.sign_url(
            self.settings.public_base_url,
            self.media_secret,
            phone_number_id,
            media_id,
            filename,
            self.settings.media_url_ttl_s,
        )
