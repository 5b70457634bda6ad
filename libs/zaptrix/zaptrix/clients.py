"""gRPC channels and stubs for the mapper and token-keeper (one channel per process, reused)."""

from __future__ import annotations

import grpc

from zaptrix.settings import GrpcClientSettings
from zaptrix.v1 import mapper_pb2_grpc, token_keeper_pb2_grpc

_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.enable_retries", 1),
]


class Clients:
    """Holds the channels; close() on shutdown. Calls must pass timeout=settings.grpc_timeout_s."""

    def __init__(self, settings: GrpcClientSettings) -> None:
        self.settings = settings
        self._mapper_channel = grpc.aio.insecure_channel(settings.mapper_addr, options=_CHANNEL_OPTIONS)
        self._tk_channel = grpc.aio.insecure_channel(settings.token_keeper_addr, options=_CHANNEL_OPTIONS)
        self.mapper = mapper_pb2_grpc.MapperStub(self._mapper_channel)
        self.token_keeper = token_keeper_pb2_grpc.TokenKeeperStub(self._tk_channel)

    @property
    def mapper_channel(self) -> grpc.aio.Channel:
        return self._mapper_channel

    @property
    def token_keeper_channel(self) -> grpc.aio.Channel:
        return self._tk_channel

    @property
    def timeout(self) -> float:
        return self.settings.grpc_timeout_s

    async def close(self) -> None:
        await self._mapper_channel.close()
        await self._tk_channel.close()
