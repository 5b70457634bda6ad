"""Run a grpc.aio server with the standard health service, metrics, graceful shutdown and, when
certificates are configured, mutual TLS plus the caller allowlist (zaptrix.grpcauth).

Without certificates the server is plaintext and lets every caller call every method: accepted in
dev/test (single-service tests), refused in production."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from zaptrix.grpcauth import CallerAllowlist, InsecureGrpcError
from zaptrix.logging import get_logger
from zaptrix.metrics import serve_metrics
from zaptrix.settings import GrpcServerSettings

if TYPE_CHECKING:  # the database runtime is the extra zaptrix[db]: only its users import it
    from zaptrix.database import Database

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
    security: GrpcServerSettings | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (with handle_signals) or until `stopped` is set. `register` adds servicers
    and returns their names. Port 0 binds a free port; `bound` receives the port actually bound.
    `security` defaults to the ZAPTRIX_GRPC_TLS_* / ZAPTRIX_GRPC_HEALTH_PORT environment."""
    security = security or GrpcServerSettings()
    if not security.tls_enabled and security.environment == "production":
        raise InsecureGrpcError(
            "refusing to serve plaintext gRPC in production: set ZAPTRIX_GRPC_TLS_CERT_FILE, _KEY_FILE, _CA_FILE"
        )
    server = grpc.aio.server(interceptors=[CallerAllowlist()] if security.tls_enabled else None)
    names = register(server)
    servicer = health.aio.HealthServicer()
    # "liveness" stays SERVING while the process runs (liveness probes); "" and each service follow
    # readiness, i.e. the database, so a database outage takes pods out of rotation without restarts.
    await servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    health_server: grpc.aio.Server | None = None
    if security.tls_enabled:
        cert, key, ca = security.read_tls()
        credentials = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=True
        )
        actual = server.add_secure_port(f"0.0.0.0:{port}", credentials)
        if security.grpc_health_port:
            # Kubelet gRPC probes speak plaintext: a second server with nothing but the health service.
            health_server = grpc.aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(servicer, health_server)
            health_server.add_insecure_port(f"0.0.0.0:{security.grpc_health_port}")
    else:
        log.warning("gRPC without mTLS: every caller may call every method (refused in production)")
        actual = server.add_insecure_port(f"0.0.0.0:{port}")
    serve_metrics(metrics_port)
    await server.start()
    if health_server is not None:
        await health_server.start()
    if bound is not None:
        bound.set_result(actual)
    log.info(
        "grpc server started",
        port=actual,
        services=names,
        metrics_port=metrics_port,
        mtls=security.tls_enabled,
        health_port=security.grpc_health_port if health_server else None,
    )
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
    if health_server is not None:
        await health_server.stop(0)


async def serve_with_database(
    db: Database,
    *,
    port: int,
    register: Callable[[grpc.aio.Server], list[str]],
    metrics_port: int = 0,
    after_open: Callable[[asyncio.Event], Awaitable[None]] | None = None,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    stopped: asyncio.Event | None = None,
    grace_s: float = 10.0,
    health_period_s: float = 2.0,
) -> None:
    """The server process of a service that owns a schema (mapper, token-keeper), until SIGTERM/SIGINT or
    `stopped`. gRPC starts at once and reports NOT_SERVING until PostgreSQL answers; meanwhile the pool
    opens in the background (retrying through outages), then ``after_open(stop)`` runs (sweeps, gauges).
    A start-up failure that is not an outage (SchemaMissing, a malformed DSN) stops the server and is
    raised. On the way out: ``on_stop()`` (e.g. let in-flight work finish), the background ended, the pool
    closed."""
    stop = stopped or asyncio.Event()

    async def start() -> None:
        try:
            await db.open_until_ready(stop)
        except Exception:  # not an outage: nothing will ever serve
            stop.set()
            raise
        if after_open is not None and not stop.is_set():
            await after_open(stop)

    background = asyncio.create_task(start(), name="db-open")
    try:
        await serve(
            port=port,
            register=register,
            readiness=db.ping,
            metrics_port=metrics_port,
            grace_s=grace_s,
            health_period_s=health_period_s,
            stopped=stop,
        )
    finally:
        stop.set()
        if on_stop is not None:
            await on_stop()
        if background.done():
            background.result()  # e.g. SchemaMissing: why the server stopped
        else:
            background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await background
        await db.close()
