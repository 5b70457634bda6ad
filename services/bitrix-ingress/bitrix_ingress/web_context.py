"""The web process's resources (Kafka producer, gRPC clients, REST client, caches) and request helpers."""

from __future__ import annotations

from typing import Any

from sanic import HTTPResponse, Request, json
from zaptrix.clients import Clients
from zaptrix.kafka import Flow, topics_for
from zaptrix.kafka.producer_startup import BackgroundProducer
from zaptrix.logging import get_logger
from zaptrix.settings import GrpcClientSettings, KafkaSettings
from zaptrix.ttlcache import TtlCache

from bitrix_ingress.deps import Deps
from bitrix_ingress.formparse import FormError, parse_form
from bitrix_ingress.pacing import PacerRegistry
from bitrix_ingress.portal import PortalClient
from bitrix_ingress.portal_egress import portal_rest
from bitrix_ingress.settings import WebSettings

# Every web module logs under the process's one name.
LOGGER = "bitrix_ingress.web"
log = get_logger(LOGGER)


class Ctx:
    """Process resources, created in before_server_start."""

    def __init__(
        self, settings: WebSettings, kafka: KafkaSettings, grpc_settings: GrpcClientSettings
    ) -> None:
        self.settings = settings
        self.kafka = kafka
        self.topic = topics_for(Flow.B24_TO_WA, kafka.topic_prefix).main
        self.producer = BackgroundProducer(kafka, client_id="bitrix-ingress-web")
        self.clients = Clients(grpc_settings)
        self.deps = Deps(self.clients)
        self.rest = portal_rest(settings, timeout_s=min(settings.bitrix_rest_timeout_s, 20.0))
        self.pacers = PacerRegistry(settings.rate_for)
        self.portals = PortalClient(self.deps, self.rest, self.pacers, settings, attempts=2)
        # (member_id, token hash) -> (known_portal, valid); the TTL depends on the verdict (see _verify)
        self.verified: TtlCache[tuple[str, str], tuple[bool, bool]] = TtlCache(
            10_000, settings.verify_cache_ttl_s
        )
        # (member_id, external chat id) -> conversation key
        self.chat_keys: TtlCache[tuple[str, str], str] = TtlCache(100_000, 86_400.0)


def ctx_of(request: Request) -> Ctx:
    ctx: Ctx = request.app.ctx.zx
    return ctx


def problem(status: int, reason: str) -> HTTPResponse:
    return json({"ok": False, "error": reason}, status=status)


# Everything is parsed before the request is authenticated: caps well below formparse.MAX_FIELDS. A real
# event has a few dozen fields per message (bitrix24.md), and events.MAX_MESSAGES messages at most.
BODY_MAX_FIELDS = 2000
QUERY_MAX_FIELDS = 100


def read_body(request: Request) -> dict[str, Any]:
    """The form of a Bitrix24 POST. Only form-encoded bodies: Bitrix24 sends nothing else, and JSON would
    skip every limit of the form parser (field count, depth; a deep document raised RecursionError)."""
    ctype = (request.content_type or "").split(";", 1)[0].strip().lower()
    if ctype not in ("", "application/x-www-form-urlencoded"):
        raise FormError(
            f"unsupported content type {ctype[:60]!r}: Bitrix24 posts form-encoded bodies "
            "(application/x-www-form-urlencoded)"
        )
    return parse_form(request.body or b"", BODY_MAX_FIELDS)


def query(request: Request) -> dict[str, Any]:
    try:
        return parse_form(request.query_string or "", QUERY_MAX_FIELDS)
    except FormError:
        return {}
