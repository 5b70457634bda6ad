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

from zaptrix.clients import Clients
from zaptrix.settings import GrpcClientSettings


@contextlib.asynccontextmanager
async def grpc_clients() -> AsyncIterator[Clients]:
    clients = Clients(GrpcClientSettings())
    try:
        yield clients
    finally:
        await clients.close()
