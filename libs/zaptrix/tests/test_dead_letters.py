"""zaptrix.dead_letters through the real broker: every flow's dead letters listed with their portal, filtered,
shown, replayed once with their effects, each replay audited first; a portal sees only its own."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from zaptrix.dead_letters import (
    AuditUnavailable,
    DeadLetterNotFound,
    DeadLetters,
    Filter,
    describe,
    parse_id,
)
from zaptrix.kafka import EventProducer, Flow, new_envelope, topics_for
from zaptrix.kafka.admin import ensure_topics
from zaptrix.kafka.effects import effects_header
from zaptrix.kafka.envelope import H_ATTEMPT, H_DLQ_AT, H_DLQ_REASON, H_DLQ_SOURCE, encode, header
from zaptrix.kafka.topics import audit_topic
from zaptrix.settings import KafkaSettings
from zaptrix.v1 import events_pb2

BOUND = {"1001": "portal-a", "2002": "portal-b"}  # phone_number_id -> member_id (the mapper's bindings)


async def read_topic(
    settings: KafkaSettings, topic: str, expect: int, wait_s: float = 20.0
) -> list[tuple[bytes, list[tuple[str, bytes]]]]:
    """What `topic` holds: waits for `expect` records (0: reads for wait_s and returns what came)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=settings.bootstrap_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    out: list[tuple[bytes, list[tuple[str, bytes]]]] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while loop.time() < deadline and (expect == 0 or len(out) < expect):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out += [(r.value or b"", list(r.headers)) for r in records]
    finally:
        await consumer.stop()
    return out


async def resolve(phone_number_id: str) -> str | None:
    return BOUND.get(phone_number_id)


def customer(n: int, pnid: str) -> events_pb2.Envelope:
    return new_envelope(
        f"wa:wamid.{n}",
        f"{pnid}:4915{n}",
        events_pb2.PLATFORM_WHATSAPP,
        customer_message=events_pb2.CustomerMessage(
            phone_number_id=pnid, wa_id=f"4915{n}", wamid=f"wamid.{n}"
        ),
    )


def operator(n: int, member_id: str) -> events_pb2.Envelope:
    return new_envelope(
        f"b24:{member_id}:{n}",
        f"chat-{n}",
        events_pb2.PLATFORM_BITRIX24,
        operator_message=events_pb2.OperatorMessage(
            member_id=member_id, bitrix_message_id=str(n), text_bbcode="hi"
        ),
    )


@pytest.fixture
async def prefix(kafka_bootstrap: str) -> AsyncIterator[tuple[KafkaSettings, str]]:
    """Every flow's topics and the audit topic under a fresh prefix, with dead letters of three portals."""
    name = f"t{uuid.uuid4().hex[:8]}"
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=name, request_timeout_ms=2000)
    topics = [t for f in Flow for t in topics_for(f, name).all()]
    await ensure_topics(settings, [*topics, audit_topic(name)], partitions=2)
    raw = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await raw.start()

    async def dead(
        flow: Flow, env: events_pb2.Envelope | None, reason: str, extra: list[tuple[str, bytes]]
    ) -> None:
        t = topics_for(flow, name)
        key, value, headers = encode(env) if env else (b"k", b"not protobuf", [])
        headers += [
            (H_ATTEMPT, b"5"),
            (H_DLQ_REASON, reason.encode()),
            (H_DLQ_SOURCE, t.retry.encode()),
            (H_DLQ_AT, b"2026-12-04T10:00:00+00:00"),
            *extra,
        ]
        await raw.send_and_wait(t.dlq, value, key=key, headers=headers)

    await dead(Flow.WA_TO_B24, customer(1, "1001"), "retries exhausted after 5 attempts: 503", [])
    await dead(
        Flow.WA_TO_B24,
        customer(2, "2002"),
        "ERROR_ARGUMENT: The line with this ID is inactive",
        effects_header({"bitrix24.sent": '{"chat":"7"}'}),
    )
    await dead(Flow.WA_TO_B24, customer(3, "9999"), "unknown channel: phone_number_id 9999", [])
    await dead(Flow.WA_TO_B24, None, "undecodable: not a zaptrix.v1.Envelope", [])
    await dead(Flow.B24_TO_WA, operator(4, "portal-a"), "Graph 131047: re-engagement message", [])
    await raw.stop()
    yield settings, name


async def test_every_flow_is_listed_with_its_portal_and_filters_match(
    prefix: tuple[KafkaSettings, str],
) -> None:
    settings, _ = prefix
    dl = DeadLetters(settings, resolve)
    everything = await dl.find()
    assert sorted((x.event_id, x.member_id) for x in everything) == [
        ("", None),  # undecodable: no portal, only an operator sees it
        ("b24:portal-a:4", "portal-a"),  # a Bitrix24 event names its portal
        ("wa:wamid.1", "portal-a"),  # a WhatsApp event: the portal its number is bound to
        ("wa:wamid.2", "portal-b"),
        ("wa:wamid.3", None),  # a number bound to no portal
    ]
    a = await dl.find(Filter(member_id="portal-a"))
    assert {x.event_id for x in a} == {"wa:wamid.1", "b24:portal-a:4"}
    assert {x.flow for x in a} == {Flow.WA_TO_B24, Flow.B24_TO_WA}
    assert [x.event_id for x in await dl.find(Filter(event_type="operator_message"))] == ["b24:portal-a:4"]
    assert [x.event_id for x in await dl.find(Filter(reason="LINE WITH THIS ID"))] == ["wa:wamid.2"]
    assert [x.event_id for x in await dl.find(Filter(flows=[Flow.B24_TO_WA]))] == ["b24:portal-a:4"]
    assert len(await dl.find(Filter(limit=2))) == 2
    one = (await dl.find(Filter(event_id="wa:wamid.1")))[0]
    assert one.reason.startswith("retries exhausted") and one.attempt == 5
    assert one.source_topic.endswith(".retry.v1") and one.dead_at is not None
    assert "2 dead letter(s) of b24-to-wa, wa-to-b24" in describe(a)


async def test_show_is_scoped_to_the_portal(prefix: tuple[KafkaSettings, str]) -> None:
    settings, _ = prefix
    dl = DeadLetters(settings, resolve)
    b = (await dl.find(Filter(member_id="portal-b")))[0]
    shown = await dl.get(b.id, member_id="portal-b")
    detail = shown.detail()
    assert detail["event"]["customer_message"]["wamid"] == "wamid.2"
    assert detail["effects"] == {"bitrix24.sent": '{"chat":"7"}'}
    with pytest.raises(DeadLetterNotFound):
        await dl.get(b.id, member_id="portal-a")  # another portal's dead letter is not there for it
    with pytest.raises(DeadLetterNotFound):
        await dl.get(f"{Flow.WA_TO_B24.value}:0:999999")
    with pytest.raises(DeadLetterNotFound):
        parse_id("nonsense")
    undecodable = next(x for x in await dl.find() if not x.event_id)
    with pytest.raises(DeadLetterNotFound):
        await dl.get(undecodable.id, member_id="portal-a")
    assert (await dl.get(undecodable.id)).detail()["event"] is None


async def test_replay_is_audited_moves_effects_along_and_happens_once(
    prefix: tuple[KafkaSettings, str],
) -> None:
    settings, name = prefix
    dl = DeadLetters(settings, resolve)
    mine = await dl.find(Filter(member_id="portal-b"))
    dry = await dl.replay(mine, actor="cli:ops", why="line re-activated", dry_run=True)
    assert [r.outcome for r in dry] == ["would_replay"]
    assert await dl.audit() == [], "a dry run changes nothing and audits nothing"

    seen: list[str] = []
    done = await dl.replay(
        mine, actor="cli:ops", why="line re-activated", on_each=lambda r: seen.append(r.outcome)
    )
    assert seen == ["replayed"] and done[0].letter.id == mine[0].id
    main = await read_topic(settings, topics_for(Flow.WA_TO_B24, name).main, 1)
    value, headers = main[0]
    assert value == mine[0].value
    assert header(headers, "zaptrix-effects") == '{"bitrix24.sent":"{\\"chat\\":\\"7\\"}"}'
    assert header(headers, H_DLQ_REASON) is None, "the dead-letter bookkeeping stays behind"

    [entry] = await dl.audit(member_id="portal-b")
    assert (entry.dead_letter_id, entry.actor, entry.why, entry.outcome) == (
        mine[0].id,
        "cli:ops",
        "line re-activated",
        "replayed",
    )
    assert entry.event_id == "wa:wamid.2" and entry.target_topic == topics_for(Flow.WA_TO_B24, name).main
    assert await dl.audit(member_id="portal-a") == []

    again = await dl.find(Filter(member_id="portal-b"))
    assert again[0].replayed and again[0].replays[0].actor == "cli:ops"
    assert await dl.find(Filter(member_id="portal-b", replayed=False)) == []
    assert len(await dl.find(Filter(replayed=False))) == 4


async def test_no_audit_no_replay(kafka_bootstrap: str) -> None:
    """Without the audit topic (not created), nothing is re-published."""
    name = f"t{uuid.uuid4().hex[:8]}"
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=name, request_timeout_ms=1000)
    t = topics_for(Flow.B24_TO_WA, name)
    await ensure_topics(settings, t.all(), partitions=1)
    producer = EventProducer(settings, client_id="t")
    await producer.start()
    try:
        key, value, headers = encode(operator(5, "portal-a"))
        await producer.publish_raw(t.dlq, key, value, [*headers, (H_DLQ_REASON, b"Graph 100")])
    finally:
        await producer.stop()
    dl = DeadLetters(settings)
    letters = await dl.find(Filter(flows=[Flow.B24_TO_WA]))
    assert [x.member_id for x in letters] == ["portal-a"]
    with pytest.raises(AuditUnavailable):
        await dl.replay(letters, actor="cli:ops")
    assert await read_topic(settings, t.main, 0, wait_s=2.0) == []
