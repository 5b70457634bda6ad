"""gRPC channels and stubs for the mapper and token-keeper (one channel per process, reused).

With ZAPTRIX_GRPC_TLS_* set, channels use mutual TLS: this process's certificate is its identity towards
the servers (zaptrix.grpcauth), and each server must present a certificate for its own name
(mapper_tls_name / token_keeper_tls_name) signed by the same CA. Production refuses plaintext."""

from __future__ import annotations

import grpc

from zaptrix.grpcauth import InsecureGrpcError
from zaptrix.settings import GrpcClientSettings
from zaptrix.v1 import mapper_pb2_grpc, token_keeper_pb2_grpc

_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.enable_retries", 1),
]


def open_channel(addr: str, server_name: str, settings: GrpcClientSettings) -> grpc.aio.Channel:
    """One channel to `addr`: mTLS when certificates are configured, plaintext otherwise (not in production)."""
    if not settings.tls_enabled:
        if settings.environment == "production":
            raise InsecureGrpcError(
                "production needs mTLS: set ZAPTRIX_GRPC_TLS_CERT_FILE, _KEY_FILE and _CA_FILE"
            )
        return grpc.aio.insecure_channel(addr, options=_CHANNEL_OPTIONS)
    cert, key, ca = settings.read_tls()
    credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    # The server is checked by its identity, not by the address we dial (a Service name or 127.0.0.1).
    options = [*_CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", server_name)]
    return grpc.aio.secure_channel(addr, credentials, options=options)


class Clients:
    """Holds the channels; close() on shutdown. Calls must pass timeout=settings.grpc_timeout_s."""

    def __init__(self, settings: GrpcClientSettings) -> None:
        self.settings = settings
        self._mapper_channel = open_channel(settings.mapper_addr, settings.mapper_tls_name, settings)
        self._tk_channel = open_channel(settings.token_keeper_addr, settings.token_keeper_tls_name, settings)
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
