"""Serving the fakes on one grpc.aio server with a health service that says SERVING."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from zaptrix.v1 import mapper_pb2_grpc, token_keeper_pb2_grpc

from zaptrix_testing.fakes.mapper import FakeMapper
from zaptrix_testing.fakes.token_keeper import FakeTokenKeeper


@dataclass
class GrpcFakes:
    mapper: FakeMapper
    token_keeper: FakeTokenKeeper
    server: grpc.aio.Server
    port: int
    loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)  # set when served by a thread

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {"ZAPTRIX_MAPPER_ADDR": self.addr, "ZAPTRIX_TOKEN_KEEPER_ADDR": self.addr}

    def stop(self) -> None:
        """Stop a server started by start_fakes_in_thread."""
        assert self.loop is not None, "served in the test's loop: await server.stop() there"
        # Asked, not awaited to the end: the server's shutdown sometimes sits in gRPC's core for seconds
        # after the last call (3 s of every fast run, waiting here), and nothing needs it finished - the
        # port was ephemeral, the thread is a daemon and ends with the test process.
        try:
            asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(timeout=0.2)
        except (TimeoutError, concurrent.futures.TimeoutError):
            pass


async def start_fakes(mapper: FakeMapper | None = None, tk: FakeTokenKeeper | None = None) -> GrpcFakes:
    """Serve the fakes in the running event loop."""
    mapper = mapper or FakeMapper()
    tk = tk or FakeTokenKeeper()
    server = grpc.aio.server()
    mapper_pb2_grpc.add_MapperServicer_to_server(mapper, server)
    token_keeper_pb2_grpc.add_TokenKeeperServicer_to_server(tk, server)
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return GrpcFakes(mapper, tk, server, port)


def start_fakes_in_thread(mapper: FakeMapper | None = None, tk: FakeTokenKeeper | None = None) -> GrpcFakes:
    """Serve the fakes from a thread with its own event loop: tests may block (subprocess start-up,
    synchronous waits) without starving the gRPC server."""
    loop = asyncio.new_event_loop()
    ready: concurrent.futures.Future[GrpcFakes] = concurrent.futures.Future()

    async def serve() -> None:
        fakes = await start_fakes(mapper, tk)
        fakes.loop = loop
        ready.set_result(fakes)
        await fakes.server.wait_for_termination()

    threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True).start()
    return ready.result(timeout=10)
