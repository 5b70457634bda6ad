"""gRPC health of mapper and token-keeper (zaptrix.grpcserver): readiness waits for the dependencies once,
at start-up; after that a dependency outage shows in its own health status and zaptrix_dependency_up and
the server stays SERVING (in rotation)."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from zaptrix.grpcserver import LIVENESS_SERVICE, serve
from zaptrix.settings import GrpcServerSettings

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _status(stub: health_pb2_grpc.HealthStub, service: str) -> int:
    return int((await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)).status)


async def _until(stub: health_pb2_grpc.HealthStub, service: str, want: int) -> None:
    for _ in range(200):
        try:
            if await _status(stub, service) == want:
                return
        except grpc.aio.AioRpcError:
            pass  # not registered yet
        await asyncio.sleep(0.02)
    raise AssertionError(f"health of {service!r} never became {want}")


async def test_ready_once_the_dependency_answered_then_serving_through_its_outage() -> None:
    up = asyncio.Event()  # the "database": down until set, down again when cleared

    async def db() -> bool:
        return up.is_set()

    stopped = asyncio.Event()
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(
        serve(
            port=0,
            register=lambda _server: ["test.v1.Thing"],
            dependencies={"testdb": db},
            health_period_s=0.02,
            stopped=stopped,
            bound=bound,
            handle_signals=False,
            security=GrpcServerSettings(environment="test"),
        )
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{await asyncio.wait_for(bound, 10)}")
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        await _until(stub, "testdb", NOT_SERVING)
        assert await _status(stub, "") == NOT_SERVING  # never reached its database: not ready yet
        assert await _status(stub, LIVENESS_SERVICE) == SERVING

        up.set()
        await _until(stub, "", SERVING)
        assert await _status(stub, "test.v1.Thing") == SERVING
        assert REGISTRY.get_sample_value("zaptrix_dependency_up", {"dependency": "testdb"}) == 1.0

        up.clear()  # the outage
        await _until(stub, "testdb", NOT_SERVING)
        assert REGISTRY.get_sample_value("zaptrix_dependency_up", {"dependency": "testdb"}) == 0.0
        assert await _status(stub, "") == SERVING
        assert await _status(stub, "test.v1.Thing") == SERVING
    finally:
        await channel.close()
        stopped.set()
        await asyncio.wait_for(server, 20)
