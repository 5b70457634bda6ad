"""meta-ingress-web: Meta's webhooks in, the signed media proxy out. Wiring and the process.

POST /webhooks/meta      raw body → channels → X-Hub-Signature-256 → one event per message/status →
                         Kafka (acks=all) → 200. A failed status with 131047 also becomes a WindowClosed
                         for the meta dispatcher. Never a 500 for what Meta (or anyone) sends. (webhooks.py)
GET  /webhooks/meta      Meta's verification handshake. (webhooks.py)
GET  /media/<pnid>/<id>  signed, expiring URL (what Bitrix24 downloads) → Graph media lookup → stream.
                         (media_proxy.py)
/health /ready /metrics  zaptrix.web.add_ops_routes.
"""

from __future__ import annotations

from types import SimpleNamespace

from sanic import Sanic
from sanic.config import Config
from zaptrix.clients import Clients
from zaptrix.health import grpc_health_check
from zaptrix.kafka.producer_startup import BackgroundProducer
from zaptrix.logging import get_logger
from zaptrix.process import run_process, serve_web
from zaptrix.settings import GrpcClientSettings, KafkaSettings
from zaptrix.web import add_ops_routes, instrument_sanic

from meta_ingress.credentials import CredentialsCache
from meta_ingress.graph import GraphClient
from meta_ingress.media_proxy import MediaProxy
from meta_ingress.settings import WebSettings
from meta_ingress.webhooks import Webhooks

SERVICE = "meta-ingress"
App = Sanic[Config, SimpleNamespace]
log = get_logger(__name__)


class WebResources:
    """What the handlers share; created in before_server_start (one event loop, one worker)."""

    def __init__(
        self, settings: WebSettings, kafka: KafkaSettings, grpc_settings: GrpcClientSettings
    ) -> None:
        self.settings = settings
        self.grpc_settings = grpc_settings
        self.clients: Clients
        self.credentials: CredentialsCache
        self.graph: GraphClient
        self.producer = BackgroundProducer(kafka, SERVICE)

    async def start(self) -> None:
        self.clients = Clients(self.grpc_settings)
        self.credentials = CredentialsCache(self.clients, self.settings)
        self.graph = GraphClient(self.settings)
        self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()
        await self.graph.aclose()
        await self.clients.close()


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
    app.config.REQUEST_MAX_SIZE = settings.web_max_body_bytes
    app.config.KEEP_ALIVE_TIMEOUT = 75  # Meta and Bitrix24 reuse connections; be longer than their idle time
    app.config.REQUEST_TIMEOUT = 30
    app.config.RESPONSE_TIMEOUT = max(60, int(settings.media_download_timeout_s) + 10)
    app.config.MOTD = False
    resources = WebResources(settings, kafka, grpc_settings)
    hooks = Webhooks(settings, kafka, resources)
    media = MediaProxy(settings, resources)
    app.ctx.resources = resources
    app.ctx.hooks = hooks

    @app.before_server_start
    async def _start(app: App) -> None:
        await resources.start()

    @app.after_server_stop
    async def _stop(app: App) -> None:
        await resources.stop()

    instrument_sanic(app)

    async def token_keeper_up() -> bool:
        return await grpc_health_check(resources.clients.token_keeper_channel)()

    add_ops_routes(
        app,
        SERVICE,
        checks={"kafka": resources.producer.healthy, "token_keeper": token_keeper_up},
        ready=resources.producer.started,
    )
    app.add_route(hooks.verify, "/webhooks/meta", methods=["GET"], name="webhook_verify")
    app.add_route(hooks.receive, "/webhooks/meta", methods=["POST"], name="webhook_receive")
    app.add_route(
        media.media,
        "/media/<phone_number_id:str>/<media_id:str>",
        methods=["GET", "HEAD"],
        name="media",
    )
    return app


def main() -> None:
    settings = WebSettings()

    def serve() -> None:
        app = create_app(settings)
        log.info("meta-ingress-web starting", port=settings.web_port, graph=settings.graph_root)
        serve_web(app, settings.web_host, settings.web_port)

    run_process(SERVICE, settings.log_level, serve)


__all__ = ["create_app", "main"]
