"""Run a grpc.aio server with the standard health service, metrics, graceful shutdown and, when
certificates are configured, mutual TLS plus the caller allowlist (zaptrix.grpcauth).

Without certificates the server is plaintext and lets every caller call every method: accepted in
dev/test (single-service tests), refused in production."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from zaptrix.grpcauth import CallerAllowlist, InsecureGrpcError
from zaptrix.health import DEPENDENCY_UP, Check, run_check
from zaptrix.logging import get_logger
from zaptrix.metrics import serve_metrics
from zaptrix.settings import GrpcServerSettings, MetricsSettings, listen_on

if TYPE_CHECKING:  # the database runtime is the extra zaptrix[db]: only its users import it
    from zaptrix.database import Database

log = get_logger(__name__)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

LIVENESS_SERVICE = "liveness"


async def _watch_dependencies(
    servicer: health.aio.HealthServicer,
    service_names: list[str],
    dependencies: Mapping[str, Check],
    period_s: float,
) -> None:
    """Each dependency's own health status (e.g. "postgres") and zaptrix_dependency_up follow its check.
    Readiness ("" and every service name) turns SERVING once every dependency has answered, i.e. once
    start-up is done, and stays SERVING through later outages: an outage of the database is every
    replica's, so going NOT_SERVING would only empty the Service, and callers would lose the fast,
    classified UNAVAILABLE answers (and token-keeper's cached tokens) their degraded modes act on. A pod
    that never reached its database (wrong DSN, a NetworkPolicy) stays out of rotation, so a bad rollout
    does not replace working pods."""
    last: dict[str, bool] = {}
    started = False
    while True:
        results = await asyncio.gather(*(run_check(c, period_s) for c in dependencies.values()))
        for name, ok in zip(dependencies, results, strict=True):
            DEPENDENCY_UP.labels(name).set(1 if ok else 0)
            if last.get(name) != ok:
                await servicer.set(name, SERVING if ok else NOT_SERVING)
                log.info("dependency health changed", dependency=name, up=ok)
                last[name] = ok
        if not started and all(results):
            for name in ["", *service_names]:
                await servicer.set(name, SERVING)
            log.info("serving: start-up done")
            started = True
        await asyncio.sleep(period_s)


async def serve(
    *,
    port: int,
    register: Callable[[grpc.aio.Server], list[str]],
    dependencies: Mapping[str, Check],
    metrics_port: int = 0,
    grace_s: float = 10.0,
    health_period_s: float = 2.0,
    stopped: asyncio.Event | None = None,
    bound: asyncio.Future[int] | None = None,
    handle_signals: bool = True,
    security: GrpcServerSettings | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (with handle_signals) or until `stopped` is set. `register` adds servicers
    and returns their names. `dependencies` (e.g. {"postgres": db.ping}) are re-checked every
    `health_period_s`: each has its own health status and zaptrix_dependency_up gauge, and readiness waits
    for all of them once, at start-up (_watch_dependencies). Port 0 binds a free port; `bound` receives the port actually bound.
    `security` defaults to the ZAPTRIX_GRPC_TLS_* / ZAPTRIX_GRPC_HEALTH_PORT environment."""
    security = security or GrpcServerSettings()
    if not security.tls_enabled and security.environment == "production":
        raise InsecureGrpcError(
            "refusing to serve plaintext gRPC in production: set ZAPTRIX_GRPC_TLS_CERT_FILE, _KEY_FILE, _CA_FILE"
        )
    server = grpc.aio.server(interceptors=[CallerAllowlist()] if security.tls_enabled else None)
    names = register(server)
    servicer = health.aio.HealthServicer()
    # "liveness" is SERVING while the process runs (liveness and startup probes); "" and each service
    # (readiness) are NOT_SERVING until start-up is done (_watch_dependencies), then until shutdown.
    await servicer.set(LIVENESS_SERVICE, SERVING)
    for name in ["", *names]:
        await servicer.set(name, NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    health_server: grpc.aio.Server | None = None
    if security.tls_enabled:
        cert, key, ca = security.read_tls()
        credentials = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=True
        )
        actual = server.add_secure_port(listen_on(security.grpc_bind_address, port), credentials)
        if security.grpc_health_port:
            # Kubelet gRPC probes speak plaintext: a second server with nothing but the health service.
            health_server = grpc.aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(servicer, health_server)
            health_server.add_insecure_port(listen_on(security.grpc_bind_address, security.grpc_health_port))
    else:
        log.warning("gRPC without mTLS: every caller may call every method (refused in production)")
        actual = server.add_insecure_port(listen_on(security.grpc_bind_address, port))
    if security.grpc_reflection:
        # The allowlist lets any caller with a certificate of our CA reflect (grpcauth.OPEN_PREFIXES).
        reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    serve_metrics(metrics_port, MetricsSettings().metrics_bind_address)
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
        address=security.grpc_bind_address,
        reflection=security.grpc_reflection,
    )
    watcher = asyncio.create_task(_watch_dependencies(servicer, names, dependencies, health_period_s))
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
    `stopped`. gRPC starts at once and reports NOT_SERVING until PostgreSQL first answers, then SERVING through
    later outages (the "postgres" health status and zaptrix_dependency_up follow the database); meanwhile the pool
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
            dependencies={"postgres": db.ping},
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
