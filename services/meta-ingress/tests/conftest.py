"""Fixtures of the meta-ingress tests: in-test gRPC fakes, unique Kafka topics, the Graph API stand-in and
the real `meta-ingress-web` / `meta-dispatcher` processes."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # meta_support (pytest runs with --import-mode=importlib)

from meta_support import Fakes, base_env, start_fakes
from zaptrix.kafka import Flow, topics_for
from zaptrix.kafka.admin import ensure_topics
from zaptrix.settings import KafkaSettings
from zaptrix_testing.ports import free_port
from zaptrix_testing.processes import BIN, Proc, Spec, start_processes, stop_all


@pytest.fixture(scope="session")
def fakes() -> Iterator[Fakes]:
    f = start_fakes()
    yield f
    f.stop()


@pytest.fixture
def fresh(fakes: Fakes) -> Fakes:
    fakes.reset()
    return fakes


@pytest.fixture(scope="session")
async def topic_prefix(kafka_bootstrap: str) -> str:
    prefix = f"zt-meta-{uuid.uuid4().hex[:8]}"
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    names = [t for flow in Flow for t in topics_for(flow, prefix).all()]
    await ensure_topics(settings, names, partitions=3)
    return prefix


@dataclass
class Stack:
    graph: Proc
    web: Proc
    dispatcher: Proc
    web_without_kafka: Proc


@pytest.fixture(scope="session")
def stack(
    kafka_bootstrap: str,
    topic_prefix: str,
    fakes: Fakes,
    tmp_path_factory: pytest.TempPathFactory,
    processes: None,
) -> Iterator[Stack]:
    """The Graph API stand-in, meta-ingress-web and meta-dispatcher, started together."""
    logs = tmp_path_factory.mktemp("stack")
    graph_port, web_port, ops_port = free_port(), free_port(), free_port()
    graph_url = f"http://127.0.0.1:{graph_port}"
    graph = Spec(
        [str(BIN / "sandbox-graph")],
        {
            "SANDBOX_GRAPH_PORT": str(graph_port),
            # Status webhooks go nowhere unless a test points them at the web process.
            "SANDBOX_GRAPH_WEBHOOK_URL": f"http://127.0.0.1:{free_port()}/webhooks/meta",
            "SANDBOX_GRAPH_WEBHOOK_RETRY_DELAYS_S": "[]",
            "SANDBOX_GRAPH_WEBHOOK_TIMEOUT_S": "2",
        },
        f"{graph_url}/_sandbox/config",
        logs / "graph.log",
    )
    common = base_env(kafka_bootstrap, topic_prefix, fakes.addr, graph_url)
    web = Spec(
        [str(BIN / "meta-ingress-web")],
        {
            **common,
            "ZAPTRIX_WEB_PORT": str(web_port),
            "ZAPTRIX_PUBLIC_BASE_URL": f"http://127.0.0.1:{web_port}",
            "ZAPTRIX_CREDENTIALS_CACHE_TTL_S": "0.5",
            "ZAPTRIX_CREDENTIALS_NEGATIVE_TTL_S": "0",
        },
        f"http://127.0.0.1:{web_port}/ready",
        logs / "web.log",
    )
    dispatcher = Spec(
        [str(BIN / "meta-dispatcher")],
        {
            **common,
            "ZAPTRIX_METRICS_PORT": str(ops_port),
            "ZAPTRIX_PAIR_RATE_PER_S": "2",
            "ZAPTRIX_CHANNEL_CACHE_TTL_S": "0",
            "ZAPTRIX_CREDENTIALS_CACHE_TTL_S": "0.5",
            "ZAPTRIX_CONSUMER_GROUP": f"meta-dispatcher-{topic_prefix}",
        },
        f"http://127.0.0.1:{ops_port}/ready",
        logs / "dispatcher.log",
    )
    dead_port = free_port()
    web_without_kafka = Spec(
        [str(BIN / "meta-ingress-web")],
        {
            **base_env(f"127.0.0.1:{free_port()}", topic_prefix, fakes.addr, graph_url),
            "ZAPTRIX_WEB_PORT": str(dead_port),
        },
        f"http://127.0.0.1:{dead_port}/health",
        logs / "web-without-kafka.log",
    )
    procs = start_processes(graph, web, dispatcher, web_without_kafka)
    yield Stack(*procs)
    stop_all(procs)


@pytest.fixture(scope="session")
def graph_sandbox(stack: Stack) -> Proc:
    return stack.graph


@pytest.fixture(scope="session")
def web(stack: Stack) -> Proc:
    return stack.web


@pytest.fixture(scope="session")
def dispatcher(stack: Stack) -> Proc:
    return stack.dispatcher


@pytest.fixture(scope="session")
def web_without_kafka(stack: Stack) -> Proc:
    """meta-ingress-web whose Kafka bootstrap points at a closed port."""
    return stack.web_without_kafka


@pytest.fixture
async def graph(graph_sandbox: Proc) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=graph_sandbox.url.rsplit("/_sandbox", 1)[0], timeout=10) as client:
        (await client.post("/_sandbox/reset")).raise_for_status()
        yield client
