"""Fixtures of bitrix-ingress's tests: in-memory gRPC fakes, Kafka topics with a unique prefix, the Bitrix24
stand-in (dev/sandbox) as a real process.

Kafka comes from ZAPTRIX_TEST_KAFKA (the root conftest.py); unit tests need nothing.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # bitrix_support (pytest runs with --import-mode=importlib)

from zaptrix.kafka import Flow, topics_for
from zaptrix.kafka.admin import ensure_topics
from zaptrix.settings import KafkaSettings
from zaptrix_testing.fakes import GrpcFakes, start_fakes
from zaptrix_testing.ports import free_port
from zaptrix_testing.processes import Proc, console_script, start_process

SANDBOX_MEMBER = "sandbox-member-1"


@pytest.fixture
async def fakes() -> AsyncIterator[GrpcFakes]:
    started = await start_fakes()
    try:
        yield started
    finally:
        await started.server.stop(None)


@pytest.fixture
async def kafka_prefix(kafka_bootstrap: str) -> str:
    """A fresh topic set per test: zt<hex>.{wa-to-b24,b24-to-wa}[.retry|.dlq].v1."""
    prefix = f"zt{uuid.uuid4().hex[:10]}"
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix)
    names = [t for flow in Flow for t in topics_for(flow, prefix).all()]
    await ensure_topics(settings, names, partitions=3)
    return prefix


@pytest.fixture(scope="session")
def sandbox_bitrix(tmp_path_factory: pytest.TempPathFactory, processes: None) -> Iterator[str]:
    """The Bitrix24 stand-in (sandbox-bitrix) on a free port; tests reset it before use."""
    port = free_port()
    log = tmp_path_factory.mktemp("sandbox") / "sandbox-bitrix.log"
    proc: Proc = start_process(
        [console_script("sandbox-bitrix")],
        {"SANDBOX_BITRIX_HOST": "127.0.0.1", "SANDBOX_BITRIX_PORT": str(port)},
        log,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 40
    while True:
        if proc.proc.poll() is not None or time.monotonic() > deadline:
            proc.stop()
            raise AssertionError(f"sandbox-bitrix did not start:\n{proc.log()[-3000:]}")
        try:
            if httpx.get(f"{url}/_sandbox/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    try:
        yield url
    finally:
        proc.stop()


@pytest.fixture
async def sandbox(sandbox_bitrix: str) -> AsyncIterator[str]:
    async with httpx.AsyncClient() as http:
        (await http.post(f"{sandbox_bitrix}/_sandbox/reset")).raise_for_status()
    yield sandbox_bitrix
