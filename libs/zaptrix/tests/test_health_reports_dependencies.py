"""The health endpoints report a dependency that is down as down (in /health and zaptrix_dependency_up)
while readiness and liveness follow only the process's own state."""

from __future__ import annotations

import grpc
import httpx
from zaptrix.health import grpc_health_check
from zaptrix.kafka import EventProducer
from zaptrix.opsserver import serve_ops
from zaptrix.settings import KafkaSettings
from zaptrix_testing.ports import free_port


async def test_a_dependency_down_is_reported_down_but_readiness_is_the_processs_own(
    kafka_bootstrap: str,
) -> None:
    up = EventProducer(KafkaSettings(bootstrap_servers=kafka_bootstrap), client_id="h1")
    await up.start()
    dead_port = free_port()
    dead_mapper = grpc.aio.insecure_channel(f"127.0.0.1:{dead_port}")
    port = free_port()
    server = await serve_ops(port, "test", {"kafka": up.healthy, "mapper": grpc_health_check(dead_mapper)})
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            health = await client.get("/health")
            ready = await client.get("/ready")
            metrics = await client.get("/metrics")
    finally:
        server.close()
        await dead_mapper.close()
        await up.stop()
    assert health.status_code == 200
    doc = health.json()
    assert doc["status"] == "degraded" and doc["service"] == "test" and doc["timestamp"]
    assert doc["dependencies"] == {"kafka": "up", "mapper": "down"}
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert b'zaptrix_dependency_up{dependency="mapper"} 0.0' in metrics.content
    assert b'zaptrix_dependency_up{dependency="kafka"} 1.0' in metrics.content
    assert b"zaptrix_events_produced_total" in metrics.content


async def test_not_ready_and_not_alive_are_the_processs_own_answers() -> None:
    async def no() -> bool:
        return False

    async def boom() -> bool:
        raise RuntimeError("a check that fails counts as false")

    port = free_port()
    server = await serve_ops(port, "test", {"db": _true}, ready=no, live=boom)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            health = await client.get("/health")
            ready = await client.get("/ready")
    finally:
        server.close()
    assert health.status_code == 503 and health.json()["dependencies"] == {"db": "up"}
    assert ready.status_code == 503 and ready.json()["ready"] is False and ready.json()["status"] == "ok"


async def _true() -> bool:
    return True
