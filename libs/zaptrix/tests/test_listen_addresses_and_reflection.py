"""Each listener binds where its setting says (ZAPTRIX_GRPC_BIND_ADDRESS, ZAPTRIX_METRICS_BIND_ADDRESS; they
all bound 0.0.0.0 before), and gRPC reflection answers only when ZAPTRIX_GRPC_REFLECTION is on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pydantic import ValidationError
from zaptrix.grpcserver import serve
from zaptrix.opsserver import serve_ops
from zaptrix.settings import GrpcServerSettings, MetricsSettings, listen_on
from zaptrix_testing.ports import free_port

OTHER_LOOPBACK = "127.0.0.2"  # a local address that is not 127.0.0.1: reached only through 0.0.0.0


async def connects(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
    except OSError:
        return False
    writer.close()
    return True


@contextlib.asynccontextmanager
async def grpc_server(security: GrpcServerSettings) -> AsyncIterator[int]:
    stopped = asyncio.Event()
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(
            port=0,
            register=lambda _server: [],
            dependencies={},
            stopped=stopped,
            bound=bound,
            handle_signals=False,
            grace_s=0,
            security=security,
        )
    )
    try:
        yield await asyncio.wait_for(bound, 10)
    finally:
        stopped.set()
        await task


async def reflected_services(port: int) -> list[str]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for answer in stub.ServerReflectionInfo(iter([request]), timeout=5):
            return [s.name for s in answer.list_services_response.service]
    return []


async def test_grpc_binds_loopback_only_when_told_and_reflects_when_on() -> None:
    async with grpc_server(
        GrpcServerSettings(environment="test", grpc_bind_address="127.0.0.1", grpc_reflection=True)
    ) as port:
        assert await connects("127.0.0.1", port)
        assert not await connects(OTHER_LOOPBACK, port)
        assert "grpc.health.v1.Health" in await reflected_services(port)
    async with grpc_server(GrpcServerSettings(environment="test")) as port:  # the default: every interface
        assert await connects(OTHER_LOOPBACK, port)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await reflected_services(port)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED, "no reflection unless switched on"


async def test_ops_listener_binds_the_metrics_address() -> None:
    port = free_port()
    server = await serve_ops(
        port, "test", {}, host=MetricsSettings(metrics_bind_address="127.0.0.1").metrics_bind_address
    )
    try:
        assert await connects("127.0.0.1", port)
        assert not await connects(OTHER_LOOPBACK, port)
    finally:
        server.close()
        await server.wait_closed()


def test_addresses_are_checked_and_ipv6_is_bracketed() -> None:
    with pytest.raises(ValidationError):
        GrpcServerSettings(grpc_bind_address="everywhere")
    with pytest.raises(ValidationError):
        MetricsSettings(metrics_bind_address="10.0.0.300")
    assert GrpcServerSettings(grpc_bind_address="[::1]").grpc_bind_address == "::1"
    assert listen_on("::", 50051) == "[::]:50051" and listen_on("0.0.0.0", 9101) == "0.0.0.0:9101"
