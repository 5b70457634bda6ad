"""Hostile delays and hostile answers reaching the consumer loop (review findings H6, M1, L12, H7 attempts).

- (a) a portal's ``Retry-After: inf`` / ``1e9`` neither crashes the dispatcher's consumer nor schedules a
  retry further ahead than retry_max_s, and the portal's next event is not stuck behind an endless pause;
- (b) a record whose routing raises is dead-lettered and the records after it are handled;
- (c) a record that kills its process is dead-lettered after N starts (a real subprocess that os._exit()s);
- (d) a REST answer larger than the cap is refused without reading it all;
- (e) random member_ids create no pacers and remote error codes create no metric labels;
- (f) SIGTERM (``stopped``) during a Kafka outage ends the consumer instead of retrying forever.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from bitrix_ingress.bitrix_rest.client import BadResponse, BitrixError, BitrixRest
from bitrix_ingress.bitrix_rest.pacing import PacerRegistry
from bitrix_ingress.bitrix_rest.portal import PortalClient, PortalUnknown, Token
from bitrix_ingress.deps import Deps
from bitrix_ingress.dispatcher.work import outcome_for
from bitrix_ingress.settings import DispatcherSettings
from zaptrix.kafka import (
    EventConsumer,
    EventProducer,
    FlowTopics,
    Outcome,
    Received,
    new_envelope,
    per_event,
)
from zaptrix.kafka.envelope import H_DLQ_REASON, H_NOT_BEFORE, header
from zaptrix.kafka.producer import PublishError
from zaptrix.metrics import EXTERNAL_CALLS
from zaptrix.rpc import RpcNotFound
from zaptrix.settings import KafkaSettings
from zaptrix.v1 import events_pb2

RETRY_MAX_S = 900.0
POISON_SCRIPT = Path(__file__).with_name("poison_consumer.py")


@pytest.fixture
async def kafka(
    flow_kafka: Callable[[int], Awaitable[tuple[KafkaSettings, FlowTopics, EventProducer]]],
) -> tuple[KafkaSettings, FlowTopics, EventProducer]:
    return await flow_kafka(1)


def _event(n: int, text: str = "hello", conversation: str = "100:4915") -> events_pb2.Envelope:
    return new_envelope(
        f"wa:wamid.{n}",
        conversation,
        events_pb2.PLATFORM_WHATSAPP,
        customer_message=events_pb2.CustomerMessage(wamid=f"wamid.{n}", text=text),
    )


async def _read(settings: KafkaSettings, topic: str, expect: int) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=settings.bootstrap_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    out: list[Any] = []
    try:
        async with asyncio.timeout(30):
            while len(out) < expect:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    out += records
    finally:
        await consumer.stop()
    return out


async def _until(check: Callable[[], bool], task: asyncio.Task[None], timeout_s: float = 30.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():
            if task.done():
                task.result()  # the consumer died: raise its error
                raise AssertionError("the consumer stopped")
            await asyncio.sleep(0.05)


class _KnownPortal(PortalClient):
    """A PortalClient whose token-keeper knows one portal (the REST side is the hostile part)."""

    async def token(self, member_id: str) -> Token:
        if member_id != "m1":
            raise PortalUnknown("PORTAL_UNKNOWN", "not installed")
        return Token("m1", "access", "https://portal.example/rest/", time.time() + 3600)


@pytest.mark.parametrize("retry_after", ["inf", "1e9", "999999999"])
async def test_hostile_retry_after_neither_crashes_nor_freezes_the_dispatcher(
    kafka: tuple[KafkaSettings, FlowTopics, EventProducer], retry_after: str
) -> None:
    settings, topics, producer = kafka
    limited = httpx.Response(
        503, json={"error": "QUERY_LIMIT_EXCEEDED"}, headers={"Retry-After": retry_after}
    )
    rest = BitrixRest(transport=httpx.MockTransport(lambda r: limited))
    dispatcher_settings = DispatcherSettings()
    portals = _KnownPortal(
        cast(Deps, None), rest, PacerRegistry(dispatcher_settings.rate_for), dispatcher_settings
    )
    handled: list[str] = []

    async def handle(rec: Received) -> Outcome:
        handled.append(rec.envelope.event_id)
        try:
            await portals.call("m1", "imconnector.send.messages", {})
        except BitrixError as exc:
            return outcome_for(exc)
        return Outcome.ok()

    consumer = EventConsumer(
        settings, topics, "g-" + uuid.uuid4().hex[:6], per_event(handle), producer, client_id="t"
    )
    stopped = asyncio.Event()
    task = asyncio.create_task(consumer.run(stopped))
    try:
        await producer.publish(topics.main, [_event(1)])
        (first,) = await _read(settings, topics.retry, 1)
        # the portal is now paused; its next event (another customer's: the first one's conversation waits
        # behind its retry) must not wait behind an endless (or 15 min) pause
        await producer.publish(topics.main, [_event(2, conversation="100:4916")])
        await _until(lambda: "wa:wamid.2" in handled, task)
        retried = await _read(settings, topics.retry, 2)
        assert not task.done(), "the consumer crashed"
    finally:
        stopped.set()
        await task
        await rest.aclose()
    for rec in [first, *retried]:
        ahead_s = (int(header(rec.headers, H_NOT_BEFORE) or 0) - rec.timestamp) / 1000
        assert ahead_s <= RETRY_MAX_S + 1, f"not_before {ahead_s:.0f} s ahead"


async def test_a_record_whose_routing_raises_is_dead_lettered_and_the_next_is_handled(
    kafka: tuple[KafkaSettings, FlowTopics, EventProducer],
) -> None:
    settings, topics, producer = kafka
    await producer.publish(topics.main, [_event(1, "route me badly"), _event(2)])
    handled: list[str] = []

    async def handle(rec: Received) -> Outcome:
        handled.append(rec.envelope.event_id)
        return Outcome.retry("try later") if rec.envelope.event_id == "wa:wamid.1" else Outcome.ok()

    consumer = EventConsumer(
        settings, topics, "g-" + uuid.uuid4().hex[:6], per_event(handle), producer, client_id="t"
    )

    def broken_backoff(attempt: int, retry_after: float | None) -> float:
        raise OverflowError("cannot convert float infinity to integer")

    consumer._backoff = broken_backoff  # type: ignore[method-assign]
    stopped = asyncio.Event()
    task = asyncio.create_task(consumer.run(stopped))
    try:
        await _until(lambda: handled == ["wa:wamid.1", "wa:wamid.2"], task)
        (dead,) = await _read(settings, topics.dlq, 1)
    finally:
        stopped.set()
        await task
    assert (header(dead.headers, H_DLQ_REASON) or "").startswith("routing failed: OverflowError")
    committed = await _committed(settings, consumer.group_id, TopicPartition(topics.main, 0))
    assert committed == 2, "both records are done with"


async def _committed(settings: KafkaSettings, group: str, tp: TopicPartition) -> int | None:
    probe = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=group)
    await probe.start()
    try:
        return cast(int | None, await probe.committed(tp))
    finally:
        await probe.stop()


async def test_a_record_that_kills_its_process_is_dead_lettered_after_n_starts(
    kafka: tuple[KafkaSettings, FlowTopics, EventProducer], tmp_path: Path
) -> None:
    settings, topics, producer = kafka
    poison_runs: list[subprocess.CompletedProcess[str]] = []
    await producer.publish(topics.main, [_event(1, "before"), _event(2, "poison"), _event(3, "after")])
    group, done_file, limit = "g-" + uuid.uuid4().hex[:6], tmp_path / "handled.txt", 3  # the default limit
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, str(POISON_SCRIPT), settings.bootstrap_servers, settings.topic_prefix, group]
    for _ in range(limit + 2):
        run = await asyncio.to_thread(
            subprocess.run,
            [*args, str(done_file)],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        poison_runs.append(run)
        if run.returncode == 0:
            break
    assert [r.returncode for r in poison_runs] == [13] * limit + [0], poison_runs[-1].stderr[-2000:]
    handled = done_file.read_text().split()
    # at least once: the record before the poison was handled in the batch that crashed, then again alone
    assert "wa:wamid.1" in handled and handled.count("wa:wamid.3") == 1 and handled[-1] == "wa:wamid.3"
    (dead,) = await _read(settings, topics.dlq, 1)
    assert dead.value and b"poison" in dead.value
    assert header(dead.headers, H_DLQ_REASON) == f"crashed its process {limit} times"


async def test_a_rest_answer_larger_than_the_cap_is_refused_without_reading_it_all() -> None:
    sent = [0]
    chunk = b" " * 65536

    async def endless() -> AsyncIterator[bytes]:
        yield b'{"result": "'
        for _ in range(160):  # 10 MiB; a hostile endpoint would never stop
            sent[0] += len(chunk)
            yield chunk
        yield b'"}'

    rest = BitrixRest(transport=httpx.MockTransport(lambda r: httpx.Response(200, content=endless())))
    try:
        with pytest.raises(BadResponse) as info:
            await rest.call("https://portal.example/rest/", "tok", "app.info", {})
    finally:
        await rest.aclose()
    assert info.value.code == "RESPONSE_TOO_LARGE"
    assert sent[0] <= 9 * 1024 * 1024, "the body was read past the cap"


class _NoPortals:
    async def get_access_token(self, member_id: str) -> Any:
        raise RpcNotFound(f"portal {member_id}")


def _outcome_labels() -> set[str]:
    return {
        s.labels["outcome"]
        for m in EXTERNAL_CALLS.collect()
        for s in m.samples
        if s.labels.get("platform") == "bitrix24"
    }


async def test_random_member_ids_and_error_codes_create_no_pacers_or_labels() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": "HOSTILE_" + uuid.uuid4().hex})

    settings = DispatcherSettings()
    rest = BitrixRest(transport=httpx.MockTransport(answer))
    portals = PortalClient(cast(Deps, _NoPortals()), rest, PacerRegistry(settings.rate_for), settings)
    before = _outcome_labels()
    try:
        for _ in range(50):  # the dispatcher path: unknown portals never reach the pacer
            with pytest.raises(PortalUnknown):
                await portals.call(uuid.uuid4().hex, "app.info", {})
        assert len(portals.pacers._pacers) == 0
        token = Token("x", "tok", "https://portal.example/rest/", time.time() + 60)
        for _ in range(50):  # the install path (member_id not yet verified): remote codes are not labels
            with pytest.raises(BitrixError):
                await portals.call_with_token(uuid.uuid4().hex, token, "app.info", {})
    finally:
        await rest.aclose()
    assert not any(label.startswith("HOSTILE_") for label in _outcome_labels() - before)
    assert len(portals.pacers._pacers) <= portals.pacers.max_size


class _DownProducer:
    """Kafka is unreachable: every publish fails."""

    def __init__(self, stopped: asyncio.Event) -> None:
        self.stopped = stopped
        self.calls = 0

    async def publish_raw(self, *args: object) -> None:
        self.calls += 1
        if self.calls == 3:
            self.stopped.set()  # SIGTERM arrives during the outage
        raise PublishError("Kafka did not accept the record")


async def test_stop_during_a_kafka_outage_ends_the_consumer_without_committing(
    kafka: tuple[KafkaSettings, FlowTopics, EventProducer],
) -> None:
    settings, topics, producer = kafka
    await producer.publish(topics.main, [_event(1)])
    stopped = asyncio.Event()
    down = _DownProducer(stopped)

    async def handle(rec: Received) -> Outcome:
        return Outcome.retry("Bitrix24 answered 502")

    consumer = EventConsumer(
        settings,
        topics,
        "g-" + uuid.uuid4().hex[:6],
        per_event(handle),
        cast(EventProducer, down),
        client_id="t",
    )
    await asyncio.wait_for(consumer.run(stopped), timeout=60)  # old code: retries until SIGKILL
    assert down.calls == 3
    committed = await _committed(settings, consumer.group_id, TopicPartition(topics.main, 0))
    assert committed in (None, 0), "nothing past the record is committed"
