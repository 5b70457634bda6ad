"""`mapper-server`: the Mapper gRPC service with health checking, metrics and dedupe expiry."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from zaptrix.database import Database
from zaptrix.grpcserver import serve_with_database
from zaptrix.logging import get_logger
from zaptrix.process import run_process, tune_gc_for_serving
from zaptrix.settings import DatabaseSettings
from zaptrix.v1 import mapper_pb2_grpc

from mapper.expiry import expire_forever
from mapper.repository import Repository
from mapper.retention import sweep_forever, sweep_once
from mapper.service import MapperService
from mapper.servicer import SERVICE_NAME, MapperServicer
from mapper.settings import MapperSettings, RetentionSettings

log = get_logger(__name__)


def registrar(servicer: MapperServicer) -> Callable[[Any], list[str]]:
    def register(server: Any) -> list[str]:
        mapper_pb2_grpc.add_MapperServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    return register


async def run(
    settings: MapperSettings,
    db_settings: DatabaseSettings,
    stopped: asyncio.Event | None = None,
    keep: RetentionSettings | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT or `stopped` (zaptrix.grpcserver.serve_with_database); dedupe expiry
    (or, with retention_interval_s, the whole retention sweep) runs once the pool is open."""
    db = Database(db_settings, connect_timeout_s=settings.db_connect_timeout_s, application_name="mapper")
    repo = Repository(db)
    retention = timedelta(hours=settings.dedupe_retention_hours)
    keep = keep or RetentionSettings()

    async def expire(stopped_: asyncio.Event) -> None:
        if keep.retention_interval_s:  # the whole retention sweep (local runs; the chart uses a CronJob)
            await sweep_forever(lambda: sweep_once(db, settings, keep), keep.retention_interval_s, stopped_)
        else:
            await expire_forever(
                repo, retention, settings.dedupe_expiry_batch, settings.dedupe_expiry_interval_s
            )

    try:
        await serve_with_database(
            db,
            port=settings.grpc_port,
            register=registrar(MapperServicer(MapperService(repo, settings, keep))),
            metrics_port=settings.metrics_port,
            after_open=expire,
            stopped=stopped,
            grace_s=settings.shutdown_grace_s,
            health_period_s=settings.health_period_s,
        )
    finally:
        log.info("mapper stopped")


def main() -> None:
    settings = MapperSettings()
    db_settings = DatabaseSettings()

    def body() -> None:
        tune_gc_for_serving()  # as the web and dispatcher processes (zaptrix.process)
        asyncio.run(run(settings, db_settings))

    run_process("mapper", settings.log_level, body)
