"""bitrix-ingress-web: the operator's events in, app install and the connector settings page.

POST /webhooks/bitrix24/outbound   connector events (operator_events.py)
POST /webhooks/bitrix24/install    ONAPPINSTALL / a UI app's install page / ONAPPUNINSTALL (install.py)
POST /webhooks/bitrix24/settings   the SETTING_CONNECTOR placement (install.py)
POST /webhooks/bitrix24/templates  the IM_TEXTAREA template picker, and .../templates/send (template_picker.py)
POST /webhooks/bitrix24/settings   the SETTING_CONNECTOR placement: the connector settings page (settings_page/)
POST /webhooks/bitrix24/settings/action   what the settings page does (bind, pause, replay, ...)
GET  /health /ready /metrics
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

from sanic import HTTPResponse, Request, Sanic
from sanic.config import Config
from sanic.exceptions import SanicException
from zaptrix.health import grpc_health_check
from zaptrix.lifetime import Lifetime
from zaptrix.logging import get_logger
from zaptrix.process import run_process, serve_web
from zaptrix.settings import GrpcClientSettings, KafkaSettings
from zaptrix.web import add_ops_routes, instrument_sanic

from bitrix_ingress.bitrix_rest.client import quiet_http_client_logs
from bitrix_ingress.settings import WebSettings
from bitrix_ingress.web.http import problem
from bitrix_ingress.web.install import INSTALL_PATH, OUTBOUND_PATH, SETTINGS_PATH, Install
from bitrix_ingress.web.operator_events import OperatorEvents
from bitrix_ingress.web.resources import WebResources
from bitrix_ingress.web.settings_page import ACTION_PATH, SettingsPage
from bitrix_ingress.web.template_picker import SEND_PATH, TEMPLATES_PATH, TemplatePicker

log = get_logger(__name__)
SERVICE = "bitrix-ingress"
App = Sanic[Config, SimpleNamespace]

__all__ = ["SERVICE", "create_app", "main"]


@dataclass(frozen=True)
class Handlers:
    """The resources and the handlers built on them, one set per server (see WebResources)."""

    resources: WebResources
    events: OperatorEvents
    install: Install
    templates: TemplatePicker
    settings_page: SettingsPage

    @classmethod
    def build(cls, resources: WebResources) -> Handlers:
        install = Install(resources)
        return cls(
            resources,
            OperatorEvents(resources, install),
            install,
            TemplatePicker(resources),
            SettingsPage(resources),
        )

    async def close(self) -> None:
        await self.settings_page.aclose()
        await self.resources.stop()


def create_app(
    settings: WebSettings,
    kafka: KafkaSettings | None = None,
    grpc_settings: GrpcClientSettings | None = None,
) -> App:
    kafka = kafka or KafkaSettings()
    grpc_settings = grpc_settings or GrpcClientSettings()
    app: App = Sanic("bitrix-ingress", configure_logging=False)
    app.config.REQUEST_MAX_SIZE = settings.web_max_body_bytes
    app.config.REQUEST_TIMEOUT = 15
    app.config.RESPONSE_TIMEOUT = 30
    app.config.FALLBACK_ERROR_FORMAT = "json"
    instrument_sanic(app)

    lifetime = Lifetime(lambda: Handlers.build(WebResources(settings, kafka, grpc_settings)))

    def handlers() -> Handlers:
        return lifetime.resources

    @app.before_server_start
    async def _start(app: App) -> None:
        await lifetime.start()
        handlers().resources.producer.start()

    @app.after_server_stop
    async def _stop(app: App) -> None:
        await lifetime.stop()

    async def kafka_check() -> bool:
        return await handlers().resources.producer.healthy()

    async def tk_check() -> bool:
        return await grpc_health_check(handlers().resources.clients.token_keeper_channel)()

    async def mapper_check() -> bool:
        return await grpc_health_check(handlers().resources.clients.mapper_channel)()

    async def outbound(request: Request) -> HTTPResponse:
        return await handlers().events.receive(request)

    async def install(request: Request) -> HTTPResponse:
        return await handlers().events.at_install_url(request)

    async def connector_settings(request: Request) -> HTTPResponse:
        return await handlers().settings_page.open(request)

    async def settings_action(request: Request) -> HTTPResponse:
        return await handlers().settings_page.act(request)

    async def template_picker(request: Request) -> HTTPResponse:
        return await handlers().templates.page_route(request)

    async def template_send(request: Request) -> HTTPResponse:
        return await handlers().templates.send_route(request)

    async def producer_started() -> bool:
        return await handlers().resources.producer.started()

    async def producer_unwedged() -> bool:
        return await handlers().resources.producer.unwedged()

    add_ops_routes(
        app,
        SERVICE,
        {"kafka": kafka_check, "token_keeper": tk_check, "mapper": mapper_check},
        ready=producer_started,
        live=producer_unwedged,
    )
    app.add_route(outbound, OUTBOUND_PATH, methods=["POST"], name="outbound")
    app.add_route(install, INSTALL_PATH, methods=["POST"], name="install")
    app.add_route(connector_settings, SETTINGS_PATH, methods=["POST"], name="settings")
    app.add_route(template_picker, TEMPLATES_PATH, methods=["POST"], name="templates")
    app.add_route(template_send, SEND_PATH, methods=["POST"], name="templates_send")
    app.add_route(settings_action, ACTION_PATH, methods=["POST"], name="settings_action")

    @app.exception(Exception)
    async def _unhandled(request: Request, exc: Exception) -> HTTPResponse:
        if isinstance(exc, SanicException):
            status = int(exc.status_code)
            return problem(status, str(exc) or "error")
        log.exception("unhandled error", path=request.path)
        return problem(503, "internal error")

    return app


def main() -> None:
    settings = WebSettings()
    run_process(
        SERVICE,
        settings.log_level,
        lambda: serve_web(create_app(settings), settings.web_host, settings.web_port),
        after_logging=quiet_http_client_logs,
    )


if __name__ == "__main__":
    main()
