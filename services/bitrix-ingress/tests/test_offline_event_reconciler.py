"""The offline-event reconciler (dispatcher/offline_events.py): records of Bitrix24's offline queue become the
web's own envelopes (same event id, same key), are confirmed only once Kafka has them, and hostile records
are parked with event.offline.error without stopping the loop. In-memory doubles: no Kafka, no gRPC."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from bitrix_ingress.dispatcher.offline_events import OfflineEvents, process_id_for
from bitrix_ingress.settings import DispatcherSettings
from bitrix_ingress.web import events as ev
from zaptrix.kafka import PublishError
from zaptrix.rpc import RpcNotFound, RpcTransient
from zaptrix.v1 import mapper_pb2, token_keeper_pb2

MEMBER = "portal-a"
OTHER_PORTALS_CHAT = "chat-of-portal-b"
OUR_CHAT = "chat-a-1"
ADD = ev.MESSAGE_ADD


def data(message_id: str, chat: str = OUR_CHAT, text: str = "[b]Anna:[/b][br] Hallo") -> dict[str, Any]:
    """EVENT_DATA: the `data` of the online ONIMCONNECTORMESSAGEADD, as Bitrix24 answers it in JSON."""
    return {
        "CONNECTOR": "zaptrix_whatsapp",
        "LINE": "1",
        "MESSAGES": [
            {
                "im": {"chat_id": "1801", "message_id": message_id},
                "message": {"user_id": "27", "text": text},
                "chat": {"id": chat},
            }
        ],
    }


def record(message_id: str, event_data: Any, name: str = ADD, **extra: Any) -> dict[str, Any]:
    return {
        "ID": message_id,
        "TIMESTAMP_X": "2026-12-04T01:00:00+00:00",
        "EVENT_NAME": name,
        "EVENT_DATA": event_data,
        "EVENT_ADDITIONAL": {"user_id": "27"},
        "MESSAGE_ID": f"mid-{message_id}",
        **extra,
    }


@dataclass
class Journal:
    """What happened, in order, across the doubles (produce vs confirm ordering is the point)."""

    steps: list[tuple[str, Any]] = field(default_factory=list)


@dataclass
class FakeDeps:
    journal: Journal
    mapper_down: bool = False
    portals: list[token_keeper_pb2.PortalStatus] = field(
        default_factory=lambda: [
            token_keeper_pb2.PortalStatus(
                member_id=MEMBER, domain="a.bitrix24.com", state=token_keeper_pb2.PORTAL_STATE_ACTIVE
            )
        ]
    )

    async def list_portals(self) -> token_keeper_pb2.ListPortalsResponse:
        return token_keeper_pb2.ListPortalsResponse(portals=self.portals)

    async def find_portal_conversation(self, member_id: str, chat: str) -> mapper_pb2.Conversation:
        if self.mapper_down:
            raise RpcTransient("mapper FindConversation", grpc.StatusCode.UNAVAILABLE, "down")
        if member_id == MEMBER and chat == OUR_CHAT:
            return mapper_pb2.Conversation(member_id=MEMBER, phone_number_id="pn1", wa_id="4917000")
        raise RpcNotFound("mapper FindConversation", "no such chat of this portal")

    async def find_message_link_by_bitrix(self, member_id: str, message_id: str) -> mapper_pb2.MessageLink:
        raise RpcNotFound("mapper FindMessageLink")


@dataclass
class FakePortals:
    """Bitrix24 REST for the reconciler: feature.get and event.offline.*; `pages` are get's answers."""

    journal: Journal
    extended: bool = True
    pages: list[list[dict[str, Any]]] = field(default_factory=list)
    fail_with: Exception | None = None

    async def call(self, member_id: str, method: str, params: dict[str, Any]) -> Any:
        if self.fail_with is not None:
            raise self.fail_with
        self.journal.steps.append((method, params))
        if method == "feature.get":
            return {"value": "Y" if self.extended else "N"}
        if method == "event.offline.get":
            events = self.pages.pop(0) if self.pages else []
            return {"process_id": None if params["clear"] else params["process_id"], "events": events}
        return True


@dataclass
class FakeProducer:
    journal: Journal
    fail: bool = False
    published: list[Any] = field(default_factory=list)

    async def healthy(self) -> bool:
        return not self.fail

    async def publish(self, topic: str, envelopes: list[Any]) -> None:
        if self.fail:
            raise PublishError("kafka down")
        self.journal.steps.append(("publish", [e.event_id for e in envelopes]))
        self.published.extend(envelopes)


def reconciler(
    *, extended: bool = True, pages: list[list[dict[str, Any]]] | None = None
) -> tuple[OfflineEvents, FakePortals, FakeProducer, FakeDeps]:
    journal = Journal()
    portals = FakePortals(journal, extended=extended, pages=list(pages or []))
    producer = FakeProducer(journal)
    deps = FakeDeps(journal)
    settings = DispatcherSettings(bitrix_offline_poll_s=1.0, bitrix_offline_pages_per_poll=4)
    return OfflineEvents(settings, deps, portals, producer, "t.b24-to-wa.v1"), portals, producer, deps  # type: ignore[arg-type]


def calls(portals: FakePortals, method: str) -> list[dict[str, Any]]:
    return [params for name, params in portals.journal.steps if name == method]


async def test_a_record_becomes_the_webs_envelope_and_is_confirmed_after_kafka_has_it() -> None:
    offline, portals, producer, _ = reconciler(pages=[[record("86001", data("86001"))]])
    await offline.poll(MEMBER, "a.bitrix24.com")

    [env] = producer.published
    web = ev.normalize(
        {"event": ADD, "data": data("86001"), "ts": "1796346000"},
        ev.Auth(MEMBER, "app-token", "a.bitrix24.com", ""),
        connector_id="zaptrix_whatsapp",
        read_on_reply=False,
    )
    assert env.event_id == web.pending[0].envelope.event_id == f"b24:{MEMBER}:86001"
    assert env.operator_message == web.pending[0].envelope.operator_message
    assert env.conversation_key == "pn1:4917000"  # the web's key: same partition as the online copy
    [get] = calls(portals, "event.offline.get")
    assert get["filter"] == {"=EVENT_NAME": ADD} and get["clear"] == 0 and get["limit"] == 50
    assert get["process_id"] == process_id_for("zaptrix_whatsapp", MEMBER)
    names = [name for name, _ in portals.journal.steps]
    assert names.index("publish") < names.index("event.offline.clear")
    [clear] = calls(portals, "event.offline.clear")
    assert clear == {"process_id": get["process_id"], "message_id": ["mid-86001"]}


async def test_nothing_is_confirmed_when_kafka_did_not_take_it_and_the_next_poll_reads_it_again() -> None:
    offline, portals, producer, _ = reconciler(pages=[[record("86002", data("86002"))]])
    producer.fail = True
    with pytest.raises(PublishError):
        await offline.poll(MEMBER, "a.bitrix24.com")
    assert calls(portals, "event.offline.clear") == [] and calls(portals, "event.offline.error") == []
    # reserved under our stable process id: the next poll (or the next process) asks for it again
    producer.fail = False
    portals.pages.append([record("86002", data("86002"))])
    await offline.poll(MEMBER, "a.bitrix24.com")
    first, second = calls(portals, "event.offline.get")
    assert first["process_id"] == second["process_id"]
    assert [e.event_id for e in producer.published] == [f"b24:{MEMBER}:86002"]


async def test_hostile_records_are_parked_and_the_good_one_still_goes_out() -> None:
    page = [
        record("1", "not a map"),
        record("2", {"CONNECTOR": "zaptrix_whatsapp", "LINE": "1"}),  # no MESSAGES
        record("3", data("3", chat=OTHER_PORTALS_CHAT)),  # another portal's chat
        record("4", data("4", text="x" * 2_000_000)),  # huge
        record("5", data("5"), name="ONCRMLEADADD"),  # not what we bound
        record("6", data("6"), MESSAGE_ID={"nested": "x"}),  # cannot even be named
        record("7", data("7")),
    ]
    offline, portals, producer, _ = reconciler(pages=[page])
    await offline.poll(MEMBER, "a.bitrix24.com")

    assert [e.event_id for e in producer.published] == [f"b24:{MEMBER}:7"]
    [error] = calls(portals, "event.offline.error")
    assert error["message_id"] == ["mid-1", "mid-2", "mid-3", "mid-4", "mid-5"]
    by_message_id, by_id = calls(portals, "event.offline.clear")
    assert by_message_id["message_id"] == ["mid-7"]
    assert by_id["id"] == ["6"]  # no MESSAGE_ID to park it by: dropped, so it cannot fill every later page


async def test_without_the_extended_mode_records_are_read_with_clear_1_and_never_confirmed() -> None:
    offline, portals, producer, _ = reconciler(extended=False, pages=[[record("86003", data("86003"))]])
    await offline.poll(MEMBER, "a.bitrix24.com")
    [get] = calls(portals, "event.offline.get")
    assert get["clear"] == 1 and "process_id" not in get
    assert calls(portals, "event.offline.clear") == [] and calls(portals, "event.offline.error") == []
    assert [e.event_id for e in producer.published] == [f"b24:{MEMBER}:86003"]


async def test_mapper_down_leaves_the_record_reserved_for_the_next_poll() -> None:
    offline, portals, producer, deps = reconciler(pages=[[record("86004", data("86004"))]])
    deps.mapper_down = True
    await offline.poll(MEMBER, "a.bitrix24.com")
    assert producer.published == []
    assert calls(portals, "event.offline.clear") == [] and calls(portals, "event.offline.error") == []


async def test_a_portal_that_fails_does_not_stop_the_loop() -> None:
    offline, portals, producer, _ = reconciler(pages=[[record("86005", data("86005"))]])
    portals.fail_with = RuntimeError("unexpected")
    stopped = asyncio.Event()
    task = asyncio.create_task(offline.run(stopped))
    await asyncio.sleep(0.05)
    portals.fail_with = None  # the portal recovers: the next poll drains it
    for _ in range(100):
        if producer.published:
            break
        await asyncio.sleep(0.05)
    stopped.set()
    await asyncio.wait_for(task, 5)
    assert not task.exception()
    assert [e.event_id for e in producer.published] == [f"b24:{MEMBER}:86005"]


async def test_no_queue_is_read_while_kafka_is_down() -> None:
    """Without rest_offline_extended a read deletes: nothing may be read that cannot be produced."""
    offline, portals, producer, _ = reconciler(extended=False, pages=[[record("86006", data("86006"))]])
    producer.fail = True
    await offline.poll_all()
    assert calls(portals, "event.offline.get") == []
    producer.fail = False
    await offline.poll_all()
    assert [e.event_id for e in producer.published] == [f"b24:{MEMBER}:86006"]


def _portal(member_id: str) -> token_keeper_pb2.PortalStatus:
    return token_keeper_pb2.PortalStatus(
        member_id=member_id, domain=f"{member_id}.bitrix24.com", state=token_keeper_pb2.PORTAL_STATE_ACTIVE
    )


async def test_a_round_spreads_the_portals_polls_over_the_interval() -> None:
    """One REST call per portal at once stalled the messages behind it (bench scaling, 100 portals):
    the n-th of N portals starts n x interval / N after the round began."""
    offline, _, _, deps = reconciler()
    deps.portals = [_portal(f"portal-{n}") for n in range(5)]
    loop = asyncio.get_running_loop()
    started: dict[str, float] = {}

    async def poll(member_id: str, domain: str) -> None:
        started[member_id] = loop.time()

    offline.poll = poll  # type: ignore[method-assign]
    begun = loop.time()
    await offline.poll_all(spread_s=0.5)
    offsets = [started[f"portal-{n}"] - begun for n in range(5)]
    assert all(offset >= 0.09 * n for n, offset in enumerate(offsets)), offsets  # 0.1 s apart, not at once


async def test_a_portal_later_in_the_round_is_not_read_once_kafka_is_gone() -> None:
    """Without rest_offline_extended a read deletes: Kafka is asked again before a later portal's turn."""
    offline, portals, producer, deps = reconciler(extended=False)
    deps.portals = [_portal("portal-first"), _portal(MEMBER)]  # MEMBER's turn comes 0.1 s later
    polled: list[str] = []
    real_poll = offline.poll

    async def poll(member_id: str, domain: str) -> None:
        polled.append(member_id)
        await real_poll(member_id, domain)
        producer.fail = True  # Kafka goes away after the first portal's poll
        offline._health = (True, -1e9)  # and the last answer about it is older than a second

    offline.poll = poll  # type: ignore[method-assign]
    await offline.poll_all(spread_s=0.2)
    assert polled == ["portal-first"]  # MEMBER's queue was not read
    assert len(calls(portals, "event.offline.get")) == 1  # the first portal's read only
