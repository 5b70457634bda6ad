"""Fixtures shared by every test suite: the real PostgreSQL and Kafka that `make test` starts, and the lanes.

`make test` exports ZAPTRIX_TEST_PG_URL (a superuser DSN of the throwaway cluster) and
ZAPTRIX_TEST_KAFKA (bootstrap servers). Tests that need them fail with a clear message without them:
they are never skipped.

Lanes: every test is marked by what it needs, from the fixtures it uses (directly or through other
fixtures): `postgres` (pg_server_url), `kafka` (kafka_bootstrap), `processes` (the `processes` fixture,
which every fixture starting a process of the system requests). A test needing none is `fast`;
`make test-fast` runs `pytest -m fast`, deselecting (never skipping) the rest. A fast test that starts
a process of the system fails with a message saying what to request, so the lane stays honest.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import pytest
from zaptrix.kafka import EventProducer, Flow, FlowTopics, topics_for
from zaptrix.kafka.admin import ensure_topics
from zaptrix.kafka.topics import audit_topic
from zaptrix.settings import KafkaSettings

# The whole-system fixture (`system`), shared by tests/e2e and tests/security: registered once, so one
# system serves both. A plugin module rather than tests/conftest.py, whose module name would clash with
# dev/sandbox/tests/conftest.py under --import-mode=importlib.
sys.path.insert(0, str(Path(__file__).resolve().parent))
pytest_plugins = ["tests.system", "zaptrix_testing.browser"]


def _require(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run the tests through `make test` (it starts PostgreSQL and Kafka)")
    return value


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    return _require("ZAPTRIX_TEST_PG_URL")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    return _require("ZAPTRIX_TEST_KAFKA")


def _with_db(url: str, db: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{db}"


@pytest.fixture
async def fresh_database(pg_server_url: str) -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """Factory: each call creates an empty database and returns its DSN; all are dropped afterwards."""
    created: list[str] = []

    async def make() -> str:
        name = f"zt_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(pg_server_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        created.append(name)
        return _with_db(pg_server_url, name)

    yield make
    conn = await asyncpg.connect(pg_server_url)
    try:
        for name in created:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
def unique_topic_suffix() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def processes() -> None:
    """Requested by every fixture (or test) that starts a process of the system (a service, a sandbox
    stand-in, the Python interpreter): it takes its tests out of the fast lane."""


# --- the lanes ------------------------------------------------------------------------------------
# The fixture each need starts from; the marks are registered in pyproject.toml.
_NEEDS = {
    "pg_server_url": "postgres",
    "kafka_bootstrap": "kafka",
    "processes": "processes",
    "browser": "browser",
}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))  # the whole closure, fixtures of fixtures included
        if "helm" in used:  # one worker renders the chart once for all of them (`make test-fast` -n)
            item.add_marker(pytest.mark.xdist_group("helm"))
        needs = {mark for name, mark in _NEEDS.items() if name in used}
        needs |= {m.name for m in item.iter_markers() if m.name in _NEEDS.values()}
        for mark in sorted(needs):
            item.add_marker(mark)
        if not needs:
            item.add_marker("fast")


def _system_programs() -> frozenset[str]:
    """The Python interpreter and the console scripts of the workspace's packages (services, sandbox)."""
    bin_dir = Path(sys.executable).parent
    scripts = {
        str(bin_dir / ep.name)
        for ep in importlib.metadata.entry_points(group="console_scripts")
        if ep.dist is not None and ep.dist.name.startswith("zaptrix")
    }
    return frozenset({sys.executable, *scripts})


@contextmanager
def _no_system_processes(item: pytest.Item) -> Iterator[None]:
    """Fast tests may run tools (helm, hadolint) but not the system: such a test is misclassified."""
    if item.get_closest_marker("fast") is None:
        yield
        return
    programs = _system_programs()
    original = subprocess.Popen.__init__

    def guarded(self: subprocess.Popen[bytes], args: object, *rest: object, **kw: object) -> None:
        argv = [args] if isinstance(args, str | bytes | os.PathLike) else list(args)  # type: ignore[call-overload]
        if argv and os.fspath(argv[0]) in programs:
            pytest.fail(
                f"{item.nodeid} starts {argv[0]} but is in the fast lane: request the `processes` "
                "fixture (root conftest.py) from the fixture that starts it, or mark the test `processes`"
            )
        original(self, args, *rest, **kw)  # type: ignore[arg-type]

    subprocess.Popen.__init__ = guarded  # type: ignore[method-assign]
    try:
        yield
    finally:
        subprocess.Popen.__init__ = original  # type: ignore[method-assign]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    with _no_system_processes(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    with _no_system_processes(item):
        return (yield)


FlowKafka = tuple[KafkaSettings, FlowTopics, EventProducer]


@pytest.fixture
async def flow_kafka(kafka_bootstrap: str) -> AsyncIterator[Callable[[int], Awaitable[FlowKafka]]]:
    """Factory: the wa-to-b24 flow's topics under a fresh prefix, with `partitions` each, and a started
    producer; the producers are stopped afterwards."""
    producers: list[EventProducer] = []

    async def make(partitions: int) -> FlowKafka:
        prefix = f"t{uuid.uuid4().hex[:8]}"
        settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix)
        topics = topics_for(Flow.WA_TO_B24, prefix)
        await ensure_topics(settings, [*topics.all(), audit_topic(prefix)], partitions=partitions)
        producer = EventProducer(settings, client_id="test")
        await producer.start()
        producers.append(producer)
        return settings, topics, producer

    yield make
    for producer in producers:
        await producer.stop()
