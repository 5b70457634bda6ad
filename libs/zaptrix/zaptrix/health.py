"""Health, readiness and dependency state, shared by the web processes, the dispatchers and tests.

Three questions, three answers (docs/ARCHITECTURE.md, "Health and readiness"):

- /health (liveness): 200 while the process works; its body reports each dependency as up or down.
- /ready (readiness): 200 while *this pod* can take traffic safely. That is the pod's own state (its Kafka
  producer has started, its consumer polls), never a dependency's: a dependency outage is shared by every
  replica, so taking them all out of rotation only empties the Service, turns Bitrix24 events (never
  resent) into ingress 503s recorded nowhere, and keeps the degraded modes from running.
- ``zaptrix_dependency_up{dependency}``: 1/0 per dependency, refreshed on every probe and scrape, for alerts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import Gauge

Check = Callable[[], Awaitable[bool]]

DEPENDENCY_UP = Gauge(
    "zaptrix_dependency_up",
    "1 while a dependency of this process answers its health check, 0 while it does not "
    "(shown in /health; never part of readiness)",
    ["dependency"],
)


async def always() -> bool:
    return True


class CachedChecks:
    """Runs the dependency checks concurrently with a timeout and caches the result briefly (probes are
    frequent); every run also sets zaptrix_dependency_up."""

    def __init__(self, checks: Mapping[str, Check], ttl_s: float = 1.0, timeout_s: float = 2.0) -> None:
        self.checks = dict(checks)
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._at = 0.0
        self._last: dict[str, bool] = {}
        self._lock = asyncio.Lock()

    async def results(self) -> dict[str, bool]:
        async with self._lock:
            if time.monotonic() - self._at > self.ttl_s:
                names = list(self.checks)
                values = await asyncio.gather(*(run_check(self.checks[n], self.timeout_s) for n in names))
                self._last = dict(zip(names, values, strict=True))
                self._at = time.monotonic()
                for name, ok in self._last.items():
                    DEPENDENCY_UP.labels(name).set(1 if ok else 0)
            return dict(self._last)


async def run_check(check: Check, timeout_s: float) -> bool:
    """A check's answer; a timeout or an exception counts as down."""
    try:
        return bool(await asyncio.wait_for(check(), timeout=timeout_s))
    except Exception:
        return False


class Probes:
    """What a process answers on /health and /ready: the dependencies (reported), whether the pod is
    ready (``ready``: its own state only) and alive (``live``: false only when it is wedged)."""

    def __init__(
        self,
        service: str,
        dependencies: Mapping[str, Check],
        ready: Check = always,
        live: Check = always,
        timeout_s: float = 2.0,
    ) -> None:
        self.service = service
        self.dependencies = CachedChecks(dependencies, timeout_s=timeout_s)
        self._ready = ready
        self._live = live
        self._timeout_s = timeout_s

    async def health(self) -> tuple[int, dict[str, Any]]:
        """(status code, body) of /health."""
        doc = await self._document()
        return (200 if await run_check(self._live, self._timeout_s) else 503), doc

    async def readiness(self) -> tuple[int, dict[str, Any]]:
        """(status code, body) of /ready."""
        doc = await self._document()
        return (200 if doc["ready"] else 503), doc

    async def refresh(self) -> None:
        """Re-run the dependency checks (if the cached answer is stale) so that a scrape sees current gauges."""
        await self.dependencies.results()

    async def _document(self) -> dict[str, Any]:
        results, ready = await asyncio.gather(
            self.dependencies.results(), run_check(self._ready, self._timeout_s)
        )
        return health_document(self.service, results, ready)


def health_document(service: str, results: Mapping[str, bool], ready: bool) -> dict[str, Any]:
    return {
        "status": "ok" if all(results.values()) else "degraded",
        "ready": ready,
        "service": service,
        "dependencies": {name: "up" if ok else "down" for name, ok in results.items()},
        "timestamp": datetime.now(UTC).isoformat(),
    }


def grpc_health_check(channel: grpc.aio.Channel, service: str = "") -> Check:
    """Up while the server answers SERVING for ``service`` ("": the server takes traffic)."""
    stub = health_pb2_grpc.HealthStub(channel)

    async def check() -> bool:
        resp = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.5)
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    return check
