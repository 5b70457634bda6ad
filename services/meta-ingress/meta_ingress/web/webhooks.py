"""Meta's webhooks: the verification handshake (GET) and the events (POST), never a 500 for what anyone
sends. The order of the checks, and why: docs/meta-ingress.md, "POST /webhooks/meta"."""

from __future__ import annotations

import asyncio
import functools
import hmac
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka.errors import KafkaError
from prometheus_client import Counter
from sanic import HTTPResponse, Request
from sanic import json as json_response
from sanic.response import raw
from zaptrix.kafka import Flow, PublishError, TransientError, topics_for
from zaptrix.kafka.envelope import H_ATTEMPT, H_DLQ_AT, H_DLQ_REASON, H_DLQ_SOURCE, encode, event_type
from zaptrix.kafka.producer import EventProducer
from zaptrix.logging import get_logger
from zaptrix.metrics import DEAD_LETTERS
from zaptrix.settings import KafkaSettings

from meta_ingress.credentials import Credentials, CredentialsCache, UnknownChannel
from meta_ingress.metrics import (
    IGNORED_CHANGES,
    INBOUND_BY_NUMBER,
    INBOUND_MESSAGES,
    INBOUND_STATUSES,
    KNOWN_ERROR_CODES,
    KNOWN_FIELDS,
    KNOWN_STATUSES,
    KNOWN_TYPES,
    PARKED,
    SIGNATURE_FAILURES,
    TRUNCATED,
    VERIFICATIONS,
    WEBHOOK_SYSTEM_ERRORS,
    WEBHOOKS,
    bounded,
)
from meta_ingress.settings import WebSettings
from meta_ingress.web import media_url, signature
from meta_ingress.web.normalize import (
    Normalized,
    Webhook,
    WebhookShapeError,
    WebhookTooLarge,
    fit,
    normalize,
    parse_envelope,
)
from meta_ingress.web.resources import Lifetime

log = get_logger(__name__)

_RECORD_OVERHEAD = 64 * 1024  # the Kafka key, headers (trace, dead-letter reason) and record framing
_PARK_TEXT = {
    "unknown_channel": "unknown channel",
    "no_app_secret": "channel has no app secret",
    "app_secret_mismatch": "app secret mismatch",
}
_UNAUTHENTICATED = "the webhook could not be authenticated"
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


def error_response(status: int, reason: str) -> HTTPResponse:
    """A refusal as JSON, never cached or sniffed."""
    return json_response({"error": reason}, status=status, headers=SECURITY_HEADERS)


def _unauthenticated() -> HTTPResponse:
    """One answer for a missing or wrong signature and for an unknown channel: no channel oracle. Meta retries
    a 401 like a 404 (for up to 7 days), so messages of a number not set up yet still arrive once it is."""
    return error_response(401, _UNAUTHENTICATED)


_NOTHING = Webhook()


def _accepted(events: int, parked: int) -> HTTPResponse:
    """The 200 answer, serialized by orjson straight into an HTTPResponse: sanic.json() builds a
    JSONResponse (a dumps wrapper, a header dict and a content-type check per answer)."""
    answer = {"events": events, "parked": parked} if parked else {"events": events}
    return HTTPResponse(orjson.dumps(answer), content_type="application/json")


_children: dict[tuple[int, str], Any] = {}


def _child(metric: Counter, label: str) -> Any:
    """A labelled child, cached: .labels() costs a lock and a tuple build on every webhook."""
    key = (id(metric), label)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(label)
    return child


class Webhooks:
    def __init__(self, settings: WebSettings, kafka: KafkaSettings, lifetime: Lifetime) -> None:
        self.settings = settings
        self.lifetime = lifetime
        self.topics = topics_for(Flow.WA_TO_B24, kafka.topic_prefix)
        self.window_topics = topics_for(Flow.B24_TO_WA, kafka.topic_prefix)
        self.history_topics = topics_for(Flow.WA_HISTORY, kafka.topic_prefix)
        self.media_secret = settings.media_secret_bytes()
        if settings.webhook_event_max_bytes + _RECORD_OVERHEAD > kafka.max_request_bytes:
            raise ValueError(
                "ZAPTRIX_WEBHOOK_EVENT_MAX_BYTES must stay 64 KiB under ZAPTRIX_KAFKA_MAX_REQUEST_BYTES "
                f"({settings.webhook_event_max_bytes} + 65536 > {kafka.max_request_bytes})"
            )

    @property
    def credentials(self) -> CredentialsCache:
        return self.lifetime.resources.credentials

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
        """Before the signature: the header, one bounded scan, at most one token-keeper lookup and one HMAC.
        After it: parse (bounded), route each channel, park what cannot be routed, produce, 200."""
        body: bytes = request.body or b""
        digest = signature.parse_header(request.headers.get("x-hub-signature-256"))
        if digest is None:
            WEBHOOKS.labels("missing_signature").inc()
            SIGNATURE_FAILURES.labels("missing").inc()
            return _unauthenticated()
        signed = await self._signer(body, digest)
        if isinstance(signed, HTTPResponse):
            return signed
        signer, scanned = signed
        # --- authenticated from here: the body is signed with the app secret `signer` ---
        try:
            hook = parse_envelope(
                orjson.loads(body), self.settings.webhook_max_updates, self.settings.webhook_max_channels
            )
        except WebhookTooLarge as exc:
            WEBHOOKS.labels("too_large").inc()
            log.warning("signed webhook over the limits", reason=str(exc))
            return error_response(413, f"webhook too large: {exc}")
        except (ValueError, RecursionError) as exc:  # orjson's JSONDecodeError and WebhookShapeError too
            WEBHOOKS.labels("malformed").inc()
            return error_response(400, f"not a WhatsApp Cloud API webhook: {str(exc)[:200]}")
        except Exception:  # a bug of ours must not turn garbage into a 500 loop
            WEBHOOKS.labels("malformed").inc()
            log.exception("webhook envelope could not be read")
            return error_response(400, "not a WhatsApp Cloud API webhook")
        for fld in hook.ignored_fields:
            _child(IGNORED_CHANGES, bounded(fld, KNOWN_FIELDS)).inc()
        channels = hook.channels
        if not channels and not hook.templates:
            WEBHOOKS.labels("ignored").inc()
            return json_response({"events": 0, "ignored_changes": len(hook.ignored_fields)})
        if scanned is not None and scanned.app_secret and channels == [scanned.phone_number_id]:
            routes: dict[str, str] | HTTPResponse = {}  # the usual webhook: its one channel signed it
        else:
            routes = await self._routes(channels, signer, scanned)
        if isinstance(routes, HTTPResponse):
            return routes
        if routes:
            taken = Webhook(
                [c for c in hook.changes if c.phone_number_id not in routes], templates=hook.templates
            )
            parked = Webhook([c for c in hook.changes if c.phone_number_id in routes])
        else:  # the usual case: every channel takes its events, nothing to split or park
            taken, parked = hook, _NOTHING
        try:
            result = normalize(taken, self._media_url)
            held = normalize(parked, self._media_url) if parked.changes else Normalized()
        except (WebhookShapeError, RecursionError) as exc:
            WEBHOOKS.labels("malformed").inc()
            log.warning("signed webhook with an unreadable item", reason=str(exc))
            return error_response(400, f"unreadable webhook item: {exc}")
        except Exception:  # Meta keeps a refused webhook and retries it: nothing is lost while we fix this
            WEBHOOKS.labels("malformed").inc()
            log.exception("signed webhook could not be normalized")
            return error_response(400, "unreadable webhook item")
        self._fit(result, held)
        for pnid, code, title, details in result.system_errors + held.system_errors:
            WEBHOOK_SYSTEM_ERRORS.labels(bounded(str(code), KNOWN_ERROR_CODES)).inc()
            log.error("Meta reported an error", phone_number_id=pnid, code=code, title=title, details=details)
        refused = await self._publish(result, held, routes)
        if refused is not None:
            return refused
        if result.confirmations:  # after Kafka took the statuses; never delays or fails this answer
            self.lifetime.resources.confirmations.record(result.confirmations)
        for kind in result.types:
            _child(INBOUND_MESSAGES, bounded(kind, KNOWN_TYPES)).inc()
        if result.types or result.statuses:
            for env in result.envelopes:
                if env.HasField("customer_message"):
                    _child(INBOUND_BY_NUMBER, env.customer_message.phone_number_id).inc()
                elif env.HasField("whatsapp_status"):
                    _child(INBOUND_STATUSES, bounded(env.whatsapp_status.status, KNOWN_STATUSES)).inc()
        _child(WEBHOOKS, "ok").inc()
        return _accepted(result.count, held.count)

    async def _signer(self, body: bytes, digest: bytes) -> tuple[str, Credentials | None] | HTTPResponse:
        """The app secret that signed the body (and the credentials of the channel the scan found, if
        any), else the 401 (or 503 when token-keeper is unreachable).

        At most one token-keeper call, then one HMAC. A body naming a phone_number_id: that channel's secret
        (one call), else a cached channel of the first entry's WhatsApp Business Account (no call). A body
        naming none (the WABA's own webhooks: template status, quality, category) asks for the app secret
        of a channel of that WABA (GetWabaAppSecret, one call, cached): a cold pod verifies them too."""
        pnid, waba = signature.signer_ids(body)
        secret = ""
        scanned: Credentials | None = None
        try:
            if pnid is not None:
                try:
                    scanned = self.credentials.cached(pnid) or await self.credentials.get(pnid)
                    secret = scanned.app_secret
                except UnknownChannel:
                    pass
                secret = secret or self.credentials.cached_app_secret(waba or "") or ""
            elif waba is not None:
                try:
                    secret = await self.credentials.waba_app_secret(waba)
                except UnknownChannel:
                    pass
        except Exception as exc:
            WEBHOOKS.labels("dependency_unavailable").inc()
            level = log.warning if isinstance(exc, TransientError) else log.error
            level(
                "cannot load channel credentials",
                phone_number_id=pnid,
                waba_id=(waba or "")[:32],
                error=str(exc),
            )
            return error_response(503, "credentials unavailable; Meta will retry")
        if not secret:
            WEBHOOKS.labels("unknown_channel").inc()
            SIGNATURE_FAILURES.labels("unknown_channel").inc()
            # Logged for the operator (first numbers only), never echoed: the answer is no channel oracle.
            log.warning("webhook naming no channel with an app secret", phone_number_id=(pnid or "")[:32])
            return _unauthenticated()
        if not signature.verify(secret, body, digest):
            WEBHOOKS.labels("bad_signature").inc()
            SIGNATURE_FAILURES.labels("mismatch").inc()
            log.warning("webhook signature mismatch", phone_number_id=(pnid or "")[:32])
            return _unauthenticated()
        return secret, scanned

    async def _routes(
        self, channels: list[str], signer: str, scanned: Credentials | None
    ) -> dict[str, str] | HTTPResponse:
        """The channels that cannot take their events, with the reason (parked); the others share `signer`.
        At most webhook_max_channels lookups, for a body already authenticated; none for the usual
        webhook, whose one channel is the one `_signer` looked up (`scanned`)."""
        results: list[Credentials | BaseException]
        if len(channels) == 1 and scanned is not None and scanned.phone_number_id == channels[0]:
            results = [scanned]
        elif len(channels) == 1:  # no gather, no tasks
            try:
                results = [await self.credentials.get(channels[0])]
            except Exception as exc:
                results = [exc]
        else:
            results = await asyncio.gather(
                *(self.credentials.get(p) for p in channels), return_exceptions=True
            )
        parked: dict[str, str] = {}
        for pnid, result in zip(channels, results, strict=True):
            if isinstance(result, UnknownChannel):
                parked[pnid] = "unknown_channel"
            elif isinstance(result, BaseException):
                WEBHOOKS.labels("dependency_unavailable").inc()
                level = log.warning if isinstance(result, TransientError) else log.error
                level("cannot load channel credentials", phone_number_id=pnid, error=str(result))
                return error_response(503, "credentials unavailable; Meta will retry")
            elif not result.app_secret:
                parked[pnid] = "no_app_secret"
            elif not hmac.compare_digest(result.app_secret.encode(), signer.encode()):
                parked[pnid] = "app_secret_mismatch"  # another app signed for this number: not its events
        for pnid, reason in parked.items():
            log.error(
                "events of a number that cannot take them are parked", phone_number_id=pnid, reason=reason
            )
        return parked

    def _fit(self, *results: Normalized) -> None:
        """One event, one Kafka record: cut what would not fit (never a 503 loop over a huge message)."""
        limit = self.settings.webhook_event_max_bytes
        for result in results:
            for env in [*result.envelopes, *result.history]:
                if fit(env, limit):
                    TRUNCATED.labels(event_type(env)).inc()
                    log.warning("event cut to fit one Kafka record", event_id=env.event_id[:120])

    async def _publish(
        self, result: Normalized, held: Normalized, parked: dict[str, str]
    ) -> HTTPResponse | None:
        """Every event acknowledged by Kafka within the deadline, else the 503 (Meta retries)."""
        producer = self.lifetime.resources.producer.producer
        if producer is None:
            WEBHOOKS.labels("kafka_unavailable").inc()
            return error_response(503, "Kafka is not reachable; Meta will retry")
        # One deadline for every publish of this webhook, passed down (zaptrix.deadlines watches it).
        deadline = asyncio.get_running_loop().time() + self.settings.publish_timeout_s
        # The SERVER span covers the sends (the answer waits for the acks): the records carry its context,
        # no PRODUCER span each (~22 µs of a webhook's ~210 µs of CPU; docs/benchmarks.md).
        publish = functools.partial(producer.publish, deadline=deadline, own_span=False)
        try:
            if result.envelopes:
                await publish(self.topics.main, result.envelopes)
            if result.window_closed:  # for the meta dispatcher: the re-engagement template
                await publish(self.window_topics.main, result.window_closed)
            if result.history:  # the history import: its own topic, never in front of live events
                await publish(self.history_topics.main, result.history)
            if result.templates:  # for the meta dispatcher: the template catalogue (mapper)
                await publish(self.window_topics.main, result.templates)
            if held.count:  # events of numbers that cannot take them (rare)
                await self._park(producer, held, parked, deadline)
        except (PublishError, KafkaError, TimeoutError) as exc:
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

    async def _park(
        self, producer: EventProducer, held: Normalized, parked: dict[str, str], deadline: float
    ) -> None:
        """Events of numbers that cannot take them go to their flow's dead-letter topic, as the consumers
        would put them, so that zaptrix-admin dead-letters replay moves them back once the number is set up (docs/runbook.md)."""
        for env, topics in (
            [(e, self.topics) for e in held.envelopes]
            + [(e, self.window_topics) for e in held.window_closed]
            + [(e, self.history_topics) for e in held.history]
        ):
            pnid = env.conversation_key.split(":", 1)[0]
            reason = parked.get(pnid, "unknown_channel")
            key, value, headers = encode(env)
            headers += [
                (H_ATTEMPT, b"0"),
                (H_DLQ_REASON, f"{_PARK_TEXT[reason]}: phone_number_id {pnid}".encode()),
                (H_DLQ_SOURCE, topics.main.encode()),
                (H_DLQ_AT, datetime.now(UTC).isoformat().encode()),
            ]
            await producer.publish_raw(topics.dlq, key, value, headers, deadline)
            PARKED.labels(reason).inc()
            DEAD_LETTERS.labels(topics.dlq, _PARK_TEXT[reason]).inc()

    def _media_url(self, phone_number_id: str, media_id: str, filename: str) -> str:
        return media_url.sign_url(
            self.settings.public_base_url,
            self.media_secret,
            phone_number_id,
            media_id,
            filename,
            self.settings.media_url_ttl_s,
        )
