"""gRPC calls to the mapper and token-keeper with their errors mapped to what a caller can act on."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import grpc
from zaptrix.kafka import PermanentError, TransientError

T = TypeVar("T")

# Worth another try later: the peer is down, overloaded or was cut off.
TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)


class RpcNotFound(LookupError):
    """The peer answered NOT_FOUND."""


class RpcConflict(Exception):
    """The peer answered ALREADY_EXISTS (e.g. a wamid linked to something else)."""


async def call(what: str, awaitable: Awaitable[T]) -> T:
    """Await a unary gRPC call: NOT_FOUND → RpcNotFound, ALREADY_EXISTS → RpcConflict, transient codes →
    TransientError, anything else (INVALID_ARGUMENT, FAILED_PRECONDITION, ...) → PermanentError."""
    try:
        return await awaitable
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        detail = exc.details() or ""
        if code == grpc.StatusCode.NOT_FOUND:
            raise RpcNotFound(f"{what}: {detail}") from exc
        if code == grpc.StatusCode.ALREADY_EXISTS:
            raise RpcConflict(f"{what}: {detail}") from exc
        if code in TRANSIENT_CODES:
            raise TransientError(f"{what}: {code.name} {detail}".strip()) from exc
        raise PermanentError(f"{what}: {code.name} {detail}".strip()) from exc
