"""Dependency checks and the health document shared by web services, dispatchers and tests.

/health is liveness: it answers 200 while the process works, and reports each dependency as up or down.
/ready is readiness: 503 while any dependency is down, so Kubernetes stops routing traffic here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

Check = Callable[[], Awaitable[bool]]


class CachedChecks:
    """Runs the checks concurrently with a timeout and caches the result briefly (probes are frequent)."""

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
                values = await asyncio.gather(*(self._run(self.checks[n]) for n in names))
                self._last = dict(zip(names, values, strict=True))
                self._at = time.monotonic()
            return dict(self._last)

    async def _run(self, check: Check) -> bool:
        try:
            return bool(await asyncio.wait_for(check(), timeout=self.timeout_s))
        except Exception:
            return False


def health_document(service: str, results: Mapping[str, bool]) -> dict[str, Any]:
    return {
        "status": "ok" if all(results.values()) else "degraded",
        "service": service,
        "dependencies": {name: "up" if ok else "down" for name, ok in results.items()},
        "timestamp": datetime.now(UTC).isoformat(),
    }


def grpc_health_check(channel: grpc.aio.Channel, service: str = "") -> Check:
    stub = health_pb2_grpc.HealthStub(channel)

    async def check() -> bool:
        resp = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.5)
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    return check
