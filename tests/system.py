"""The whole system as real processes, shared by tests/e2e and tests/security: real PostgreSQL and Kafka,
mapper, token-keeper, both web services, both dispatchers, and the sandbox stand-ins for Meta and Bitrix24.
Started once per test session, on first use; registered as a pytest plugin by the root conftest.py."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "dev"), str(Path(__file__).resolve().parents[1])]
from localsystem import ROOT, LocalSystem, Ports  # noqa: E402
from zaptrix.kafka import Flow, topics_for  # noqa: E402
from zaptrix.kafka.admin import ensure_topics  # noqa: E402
from zaptrix.kafka.topics import audit_topic  # noqa: E402
from zaptrix.settings import KafkaSettings  # noqa: E402
from zaptrix_testing.ports import free_port  # noqa: E402

from tests.e2e.otlp import Receiver, start_receiver  # noqa: E402


@dataclass
class System:
    local: LocalSystem
    otlp: Receiver
    graph: httpx.AsyncClient  # the Graph API stand-in (simulator API under /_sandbox/)
    bitrix: httpx.AsyncClient  # the Bitrix24 stand-in
    meta_web: httpx.AsyncClient
    bitrix_web: httpx.AsyncClient
    kafka: KafkaSettings

    @property
    def ports(self) -> Ports:
        return self.local.ports


@pytest.fixture(scope="session")
async def system(
    pg_server_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, processes: None
) -> AsyncIterator[System]:
    import asyncpg

    db = f"e2e_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(pg_server_url)
    await conn.execute(f'CREATE DATABASE "{db}"')
    await conn.close()
    database_url = pg_server_url.rsplit("/", 1)[0] + f"/{db}"

    prefix = f"e2e{uuid.uuid4().hex[:6]}"
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix)
    await ensure_topics(
        kafka, [*(t for flow in Flow for t in topics_for(flow, prefix).all()), audit_topic(prefix)]
    )

    otlp_port = free_port()
    server, receiver = await start_receiver(otlp_port)
    kport = kafka_bootstrap.rpartition(":")[2]
    ports = Ports.random(pg=0, kafka=int(kport))
    ports = Ports(**{**ports.__dict__, "otlp": otlp_port})
    state = tmp_path_factory.mktemp("system")
    fast_export = {"OTEL_BSP_SCHEDULE_DELAY": "200"}
    local = LocalSystem(
        ports=ports,
        state_dir=state,
        database_url=database_url,
        topic_prefix=prefix,
        # The meta dispatcher re-reads channel bindings quickly: tests change a channel's template mid-run.
        extra_env=dict.fromkeys(_ALL, fast_export)
        # "promo_offer" stands for a MARKETING template (tests/e2e/test_coexistence.py).
        | {
            "meta-dispatcher": fast_export
            | {"ZAPTRIX_CHANNEL_CACHE_TTL_S": "0.5", "ZAPTRIX_MARKETING_TEMPLATES": "promo_offer"}
        }
        # The offline-event reconciler drains the portals' queues every second (default 10 s).
        | {"bitrix-dispatcher": fast_export | {"ZAPTRIX_BITRIX_OFFLINE_POLL_S": "1"}},
    )
    try:
        await local.start()
        await local.seed()
    except Exception:
        await local.stop()
        await server.stop(0)
        raise
    p = ports
    clients = [
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{p.graph}", timeout=15),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{p.bitrix}", timeout=15),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{p.meta_web}", timeout=15),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{p.bitrix_web}", timeout=15),
    ]
    yield System(local, receiver, *clients, kafka)
    for c in clients:
        await c.aclose()
    await local.stop()
    await server.stop(0)
    conn = await asyncpg.connect(pg_server_url)
    await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    await conn.close()


_ALL = [
    "mapper",
    "token-keeper",
    "meta-ingress",
    "meta-dispatcher",
    "bitrix-ingress",
    "bitrix-dispatcher",
]


__all__ = ["ROOT", "System"]
