"""meta-ingress-web: the Sanic app (routes, resources, ops routes) and the process. See docs/meta-ingress.md."""

from __future__ import annotations

from types import SimpleNamespace

from sanic import Sanic
from sanic.config import Config
from zaptrix.health import grpc_health_check
from zaptrix.logging import get_logger
from zaptrix.process import run_process, serve_web
from zaptrix.settings import GrpcClientSettings, KafkaSettings
from zaptrix.web import add_ops_routes, instrument_sanic

from meta_ingress.settings import WebSettings
from meta_ingress.web.media_proxy import MediaProxy
from meta_ingress.web.resources import SERVICE, Lifetime, WebResources
from meta_ingress.web.webhooks import Webhooks

App = Sanic[Config, SimpleNamespace]
log = get_logger(__name__)


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
    lifetime = Lifetime(lambda: WebResources(settings, kafka, grpc_settings))
    hooks = Webhooks(settings, kafka, lifetime)
    media = MediaProxy(settings, lifetime)

    @app.before_server_start
    async def _start(app: App) -> None:
        await lifetime.start()

    @app.after_server_stop
    async def _stop(app: App) -> None:
        await lifetime.stop()

    instrument_sanic(app)

    async def kafka_up() -> bool:
        return await lifetime.resources.producer.healthy()

    async def token_keeper_up() -> bool:
        return await grpc_health_check(lifetime.resources.clients.token_keeper_channel)()

    async def producer_started() -> bool:
        return await lifetime.resources.producer.started()

    async def producer_unwedged() -> bool:
        return await lifetime.resources.producer.unwedged()

    add_ops_routes(
        app,
        SERVICE,
        checks={"kafka": kafka_up, "token_keeper": token_keeper_up},
        ready=producer_started,
        live=producer_unwedged,
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
