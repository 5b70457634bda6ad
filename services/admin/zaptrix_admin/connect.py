"""What the commands talk to, opened per command and closed after it.

- token-keeper's database (`portals list|show|add|remove`, `tokens`): ZAPTRIX_DATABASE_URL and
  ZAPTRIX_TOKEN_KEEPER_KEYS, as token-keeper has them; works while the servers are down.
- mapper and token-keeper over gRPC (`channels`, `portals register`, the portals of dead letters):
  ZAPTRIX_MAPPER_ADDR, ZAPTRIX_TOKEN_KEEPER_ADDR and, with mutual TLS, the operator certificate
  (CN admin.zaptrix) in ZAPTRIX_GRPC_TLS_CERT_FILE/_KEY_FILE/_CA_FILE.
- Kafka (`dead-letters`): ZAPTRIX_KAFKA_*.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from zaptrix.clients import Clients
from zaptrix.rpc import RpcNotFound, call
from zaptrix.settings import GrpcClientSettings
from zaptrix.v1 import mapper_pb2

from zaptrix_admin.output import UsageError


@contextlib.asynccontextmanager
async def grpc_clients() -> AsyncIterator[Clients]:
    clients = Clients(GrpcClientSettings())
    try:
        yield clients
    finally:
        await clients.close()


async def bound_channel(mapper: Any, rpc_timeout: float, phone_number_id: str) -> mapper_pb2.Channel:
    """The mapper's binding of a number; an unbound one is the operator's mistake (a usage error)."""
    try:
        channel: mapper_pb2.Channel = await call(
            "mapper GetChannel",
            mapper.GetChannel(
                mapper_pb2.GetChannelRequest(phone_number_id=phone_number_id), timeout=rpc_timeout
            ),
        )
    except RpcNotFound:
        raise UsageError(f"number {phone_number_id} is not bound") from None
    return channel
