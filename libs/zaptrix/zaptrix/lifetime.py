"""The one thing in a web process that is bound late: what the handlers share exists only while the
server runs (gRPC channels and the Kafka producer belong to the server's event loop)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Protocol, TypeVar


class Closeable(Protocol):
    async def close(self) -> None: ...


T = TypeVar("T", bound=Closeable)


class Lifetime(Generic[T]):
    """Opened in before_server_start, closed after the server stops. Handlers are built with the Lifetime
    and read ``resources`` per request; Sanic routes no request before before_server_start has run."""

    def __init__(self, open_resources: Callable[[], T]) -> None:
        self._open = open_resources
        self._resources: T | None = None

    @property
    def resources(self) -> T:
        if self._resources is None:
            raise RuntimeError("the web resources are not open (before_server_start has not run)")
        return self._resources

    async def start(self) -> None:
        self._resources = self._open()

    async def stop(self) -> None:
        resources, self._resources = self._resources, None
        if resources is not None:
            await resources.close()
