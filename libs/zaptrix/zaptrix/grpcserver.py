"""Run a grpc.aio server with the standard health service, metrics and graceful shutdown."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from zaptrix.logging import get_logger
from zaptrix.metrics import serve_metrics

log = get_logger(__name__)

Readiness = Callable[[], Awaitable[bool]]
LIVENESS_SERVICE = "liveness"


async def _watch_readiness(
    servicer: health.aio.HealthServicer, service_names: list[str], readiness: Readiness, period_s: float
) -> None:
    """Reports NOT_SERVING while a dependency (the database) is unreachable, SERVING once it is back."""
    last: bool | None = None
    while True:
        try:
            ok = await asyncio.wait_for(readiness(), timeout=period_s)
        except Exception:
            ok = False
        if ok != last:
            status = (
                health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in ["", *service_names]:
                await servicer.set(name, status)
            log.info("health changed", serving=ok)
            last = ok
        await asyncio.sleep(period_s)


async def serve(
    *,
    port: int,
    register: Callable[[grpc.aio.Server], list[str]],
    readiness: Readiness,
    metrics_port: int = 0,
    grace_s: float = 10.0,
    health_period_s: float = 2.0,
    stopped: asyncio.Event | None = None,
    bound: asyncio.Future[int] | None = None,
    handle_signals: bool = True,
) -> None:
    """Serve until SIGTERM/SIGINT (with handle_signals) or until `stopped` is set. `register` adds servicers
    and returns their names. Port 0 binds a free port; `bound` receives the port actually bound."""
    server = grpc.aio.server()
    names = register(server)
    servicer = health.aio.HealthServicer()
    # "liveness" stays SERVING while the process runs (liveness probes); "" and each service follow
    # readiness, i.e. the database, so a database outage takes pods out of rotation without restarts.
    await servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    actual = server.add_insecure_port(f"0.0.0.0:{port}")
    serve_metrics(metrics_port)
    await server.start()
    if bound is not None:
        bound.set_result(actual)
    log.info("grpc server started", port=actual, services=names, metrics_port=metrics_port)
    watcher = asyncio.create_task(_watch_readiness(servicer, names, readiness, health_period_s))
    stop = stopped or asyncio.Event()
    if handle_signals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("grpc server stopping", grace_s=grace_s)
    await servicer.enter_graceful_shutdown()
    watcher.cancel()
    await server.stop(grace_s)
