"""The wrapper of every gRPC handler of the services that own a schema (mapper, token-keeper): a domain
error becomes its status code, anything else a bare INTERNAL, and every call is counted and timed. Needs
the extra zaptrix[db] (a database outage is UNAVAILABLE here)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, NoReturn, TypeVar

import grpc

from zaptrix.database import DatabaseUnavailable
from zaptrix.logging import get_logger

log = get_logger(__name__)

S = TypeVar("S")
Req = TypeVar("Req")
Resp = TypeVar("Resp")
# (error class, status code), first match wins: subclasses take their base's code unless listed first.
StatusTable = Sequence[tuple[type[Exception], grpc.StatusCode]]
# Called once per call with the method name, the status code and the seconds it took.
Observe = Callable[[str, grpc.StatusCode, float], None]
Handler = Callable[[S, Req], Awaitable[Resp]]
GrpcMethod = Callable[[S, Req, Any], Coroutine[Any, Any, Resp]]


def status_of(exc: Exception, errors: StatusTable) -> grpc.StatusCode:
    """The service's own table first; a database outage is UNAVAILABLE (retry) for every service."""
    table: StatusTable = [*errors, (DatabaseUnavailable, grpc.StatusCode.UNAVAILABLE)]
    return next((code for kind, code in table if isinstance(exc, kind)), grpc.StatusCode.INTERNAL)


async def _abort(context: Any, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("context.abort returned")  # pragma: no cover


def rpc_decorator(
    errors: StatusTable, observe: Observe
) -> Callable[[Handler[S, Req, Resp]], GrpcMethod[S, Req, Resp]]:
    """``@rpc`` for a servicer's methods, which take the request only. The detail of a mapped error is its
    message (never put a secret in one); an unexpected error is logged by type only (driver texts may
    quote parameters) and answered "internal error"; a cancelled call is counted as CANCELLED."""

    def rpc(handler: Handler[S, Req, Resp]) -> GrpcMethod[S, Req, Resp]:
        method = handler.__name__

        @functools.wraps(handler)
        async def wrapper(self: S, request: Req, context: Any) -> Resp:
            # Observed before the answer leaves (an abort sends it): whoever has the answer sees it counted.
            started = time.perf_counter()
            try:
                response = await handler(self, request)
            except asyncio.CancelledError:
                observe(method, grpc.StatusCode.CANCELLED, time.perf_counter() - started)
                raise
            except Exception as exc:
                code = status_of(exc, errors)
                observe(method, code, time.perf_counter() - started)
                if code is grpc.StatusCode.INTERNAL:
                    log.error("rpc failed", method=method, error_type=type(exc).__name__)
                    await _abort(context, code, "internal error")
                if code is grpc.StatusCode.UNAVAILABLE:
                    # Debug only: during an outage this fires for every request; the outage itself is logged
                    # by the health watcher and the pool's reconnect loop, and counted by `observe`.
                    log.debug("rpc unavailable", method=method, error=str(exc))
                await _abort(context, code, str(exc))
            observe(method, grpc.StatusCode.OK, time.perf_counter() - started)
            return response

        return wrapper

    return rpc


__all__ = ["Observe", "StatusTable", "rpc_decorator", "status_of"]
