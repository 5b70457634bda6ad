"""bitrix-ingress-web: Bitrix24 connector events in, app install and the connector settings page.

POST /webhooks/bitrix24/outbound   connector events (form-encoded): authenticate by
                                   auth[application_token], normalize, produce (acks=all), 200
POST /webhooks/bitrix24/install    ONAPPINSTALL / a UI app's install page / ONAPPUNINSTALL
POST /webhooks/bitrix24/settings   the SETTING_CONNECTOR placement (activate the connector on a line)
GET  /health /ready /metrics

This module wires the app: outbound_events (connector events), install_routes and portal_install
(install, settings page), web_context (process resources, request helpers).
"""

from __future__ import annotations

from sanic import HTTPResponse, Request, Sanic
from sanic.exceptions import SanicException
from zaptrix.health import grpc_health_check
from zaptrix.logging import get_logger
from zaptrix.process import run_process, serve_web
from zaptrix.settings import GrpcClientSettings, KafkaSettings
from zaptrix.web import add_ops_routes, instrument_sanic

from bitrix_ingress.install import INSTALL_PATH, OUTBOUND_PATH, SETTINGS_PATH
from bitrix_ingress.install_routes import install, settings_handler
from bitrix_ingress.outbound_events import outbound
from bitrix_ingress.rest import quiet_http_client_logs
from bitrix_ingress.settings import WebSettings
from bitrix_ingress.web_context import LOGGER, Ctx, problem

log = get_logger(LOGGER)
SERVICE = "bitrix-ingress"

__all__ = ["SERVICE", "create_app", "main"]


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
        zx.producer.start()

    @app.after_server_stop
    async def _stop(app: Sanic) -> None:  # type: ignore[type-arg]
        zx: Ctx = app.ctx.zx
        await zx.producer.stop()
        await zx.rest.aclose()
        await zx.clients.close()

    async def kafka_check() -> bool:
        zx: Ctx = app.ctx.zx
        return await zx.producer.healthy()

    async def tk_check() -> bool:
        zx: Ctx = app.ctx.zx
        return await grpc_health_check(zx.clients.token_keeper_channel)()

    async def mapper_check() -> bool:
        zx: Ctx = app.ctx.zx
        return await grpc_health_check(zx.clients.mapper_channel)()

    async def producer_started() -> bool:
        zx: Ctx = app.ctx.zx
        return await zx.producer.started()

    add_ops_routes(
        app,
        SERVICE,
        {"kafka": kafka_check, "token_keeper": tk_check, "mapper": mapper_check},
        ready=producer_started,
    )
    app.add_route(outbound, OUTBOUND_PATH, methods=["POST"], name="outbound")
    app.add_route(install, INSTALL_PATH, methods=["POST"], name="install")
    app.add_route(settings_handler, SETTINGS_PATH, methods=["POST"], name="settings")

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
        lambda: serve_web(create_app(settings), "0.0.0.0", settings.web_port),
        after_logging=quiet_http_client_logs,
    )


if __name__ == "__main__":
    main()
