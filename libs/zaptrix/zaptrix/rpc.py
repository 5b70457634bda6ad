"""Calls to the internal gRPC services (mapper, token-keeper) with every status code mapped to one meaning.

| codes | error | the consumer does |
|---|---|---|
| UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, INTERNAL, UNKNOWN, CANCELLED | RpcTransient | retry later |
| NOT_FOUND | RpcNotFound | the caller decides; unhandled: dead letter |
| ALREADY_EXISTS | RpcConflict | the caller decides; unhandled: dead letter |
| INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE, PERMISSION_DENIED, UNAUTHENTICATED, UNIMPLEMENTED, DATA_LOSS | RpcPermanent | dead letter |

PERMISSION_DENIED and UNAUTHENTICATED come from the per-caller allowlist (zaptrix.grpcauth), UNIMPLEMENTED
from a peer without the method: a deployment that needs fixing, not a peer having a bad minute. Retrying
would only hide it behind warnings until the retries run out; dead-lettered, each event stays replayable
from the dead-letter topic once fixed, and every such answer is logged at error level here.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import grpc

from zaptrix.errors import PermanentError, TransientError
from zaptrix.logging import get_logger

log = get_logger(__name__)

T = TypeVar("T")
_S = grpc.StatusCode

# Worth another try later: the peer is down, overloaded, was cut off or failed on its side.
TRANSIENT_CODES = frozenset(
    {
        _S.UNAVAILABLE,
        _S.DEADLINE_EXCEEDED,
        _S.RESOURCE_EXHAUSTED,
        _S.ABORTED,
        _S.INTERNAL,
        _S.UNKNOWN,
        _S.CANCELLED,
    }
)
# The same request will be refused again until someone changes it or the deployment.
PERMANENT_CODES = frozenset(
    {
        _S.INVALID_ARGUMENT,
        _S.FAILED_PRECONDITION,  # token-keeper: the portal needs re-authorisation or is uninstalled
        _S.OUT_OF_RANGE,
        _S.PERMISSION_DENIED,
        _S.UNAUTHENTICATED,
        _S.UNIMPLEMENTED,
        _S.DATA_LOSS,
    }
)
# Refusals that mean our own deployment is wrong (allowlist, certificates, versions): logged loudly.
MISCONFIGURED_CODES = frozenset({_S.PERMISSION_DENIED, _S.UNAUTHENTICATED, _S.UNIMPLEMENTED})
MAX_REASON = 500


class RpcError(Exception):
    """A gRPC call that did not succeed; ``reason`` names the call, the code and the peer's details."""

    permanent: bool
    code: grpc.StatusCode
    what: str
    details: str
    reason: str
    retry_after: float | None

    def __init__(self, what: str, code: grpc.StatusCode, details: str = "") -> None:
        self.what = what
        self.code = code
        self.details = details
        self.reason = (f"{what}: {code.name}" + (f": {details}" if details else ""))[:MAX_REASON]
        self.retry_after = None
        Exception.__init__(self, self.reason)  # not cooperative: the attributes above are the whole state


class RpcNotFound(RpcError, PermanentError, LookupError):
    """NOT_FOUND: callers decide what an unknown thing means (an unhandled one is dead-lettered)."""

    def __init__(self, what: str, details: str = "") -> None:
        super().__init__(what, grpc.StatusCode.NOT_FOUND, details)


class RpcFailed(RpcError):
    """Any failure other than NOT_FOUND; ``permanent`` tells whether another try can succeed."""


class RpcTransient(RpcFailed, TransientError):
    """Worth another try later."""


class RpcPermanent(RpcFailed, PermanentError):
    """Refused as it is: dead letter (replayable after the fix)."""


class RpcConflict(RpcPermanent):
    """ALREADY_EXISTS: e.g. a wamid linked to something else."""


def error_for(what: str, code: grpc.StatusCode, details: str = "") -> RpcError:
    """The typed error for a status code (anything not known to be transient is permanent)."""
    if code == grpc.StatusCode.NOT_FOUND:
        return RpcNotFound(what, details)
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return RpcConflict(what, code, details)
    if code in TRANSIENT_CODES:
        return RpcTransient(what, code, details)
    return RpcPermanent(what, code, details)


async def call(what: str, awaitable: Awaitable[T]) -> T:
    """Await a unary gRPC call; a failure is raised as :func:`error_for` says, chained to the gRPC error."""
    try:
        return await awaitable
    except grpc.aio.AioRpcError as exc:
        err = error_for(what, exc.code(), exc.details() or "")
        if err.code in MISCONFIGURED_CODES:
            log.error("internal gRPC call refused: check the caller allowlist and versions", error=err.reason)
        raise err from exc


__all__ = [
    "MISCONFIGURED_CODES",
    "PERMANENT_CODES",
    "TRANSIENT_CODES",
    "RpcConflict",
    "RpcError",
    "RpcFailed",
    "RpcNotFound",
    "RpcPermanent",
    "RpcTransient",
    "call",
    "error_for",
]
