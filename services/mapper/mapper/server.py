"""`mapper-server`: the Mapper gRPC service with health checking, metrics and dedupe expiry."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from zaptrix.database import Database
from zaptrix.grpcserver import serve
from zaptrix.logging import configure_logging, get_logger
from zaptrix.settings import DatabaseSettings
from zaptrix.telemetry import setup_telemetry, shutdown_telemetry
from zaptrix.v1 import mapper_pb2_grpc

from mapper.expiry import expire_forever
from mapper.repository import Repository
from mapper.service import MapperService
from mapper.servicer import SERVICE_NAME, MapperServicer
from mapper.settings import MapperSettings

log = get_logger(__name__)


def registrar(servicer: MapperServicer) -> Callable[[Any], list[str]]:
    def register(server: Any) -> list[str]:
        mapper_pb2_grpc.add_MapperServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    return register


async def run(
    settings: MapperSettings, db_settings: DatabaseSettings, stopped: asyncio.Event | None = None
) -> None:
    """Serve until SIGTERM/SIGINT or `stopped`. The gRPC server starts at once and reports
    NOT_SERVING until PostgreSQL first answers (the pool keeps retrying in the background); after that it
    stays SERVING, and a database outage shows in the "postgres" health status and zaptrix_dependency_up."""
    stopped = stopped or asyncio.Event()
    db = Database(db_settings, connect_timeout_s=settings.db_connect_timeout_s, application_name="mapper")
    repo = Repository(db)
    servicer = MapperServicer(MapperService(repo, settings))
    background = [
        asyncio.create_task(db.open_until_ready(stopped), name="db-open"),
        asyncio.create_task(
            expire_forever(
                repo,
                timedelta(hours=settings.dedupe_retention_hours),
                settings.dedupe_expiry_batch,
                settings.dedupe_expiry_interval_s,
            ),
            name="dedupe-expiry",
        ),
    ]
    try:
        await serve(
            port=settings.grpc_port,
            register=registrar(servicer),
            dependencies={"postgres": db.ping},
            metrics_port=settings.metrics_port,
            grace_s=settings.shutdown_grace_s,
            health_period_s=settings.health_period_s,
            stopped=stopped,
        )
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await db.close()
        log.info("mapper stopped")


def main() -> None:
    settings = MapperSettings()
    db_settings = DatabaseSettings()
    configure_logging("mapper", settings.log_level)
    setup_telemetry("mapper")
    try:
        asyncio.run(run(settings, db_settings))
    finally:
        shutdown_telemetry()
