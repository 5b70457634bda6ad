"""The read mark of an operator reply may carry the typing indicator (a setting); a finished dialog's never.
In process, against the Graph stand-in (which validates the mark-as-read payload) and the gRPC fakes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from meta_ingress.dispatcher.context import Context
from meta_ingress.dispatcher.notices import Notifier
from meta_ingress.dispatcher.operator_events import OperatorEvents
from meta_ingress.graph.client import GraphClient
from meta_ingress.settings import DispatcherSettings
from meta_support import MEMBER, Fakes
from zaptrix.clients import Clients
from zaptrix.settings import GrpcClientSettings
from zaptrix.v1 import events_pb2, mapper_pb2


@pytest.fixture
async def events(graph: httpx.AsyncClient, fresh: Fakes) -> AsyncIterator[OperatorEvents]:
    settings = DispatcherSettings(
        graph_api_base_url=str(graph.base_url).rstrip("/"),
        allow_insecure_http=True,
        egress_allow_networks=["127.0.0.1/32"],
        operator_read_typing_indicator=True,
    )
    clients = Clients(GrpcClientSettings(mapper_addr=fresh.addr, token_keeper_addr=fresh.addr))
    client = GraphClient(settings)
    ctx = Context(settings, clients, client, Notifier(None, "unused"))  # type: ignore[arg-type]
    yield OperatorEvents(ctx, None)  # type: ignore[arg-type]
    await client.aclose()
    await clients.close()


async def _customer_wrote(graph: httpx.AsyncClient, fresh: Fakes) -> tuple[str, mapper_pb2.Conversation, str]:
    wa = f"4917{uuid.uuid4().int % 10**8:08d}"
    conv = fresh.mapper.add_conversation(wa)
    wamid = (await graph.post(f"/_sandbox/customers/{wa}/messages", json={"text": "hallo"})).json()["wamid"]
    fresh.mapper.links[wamid] = mapper_pb2.MessageLink(
        conversation_id=conv.id, direction=mapper_pb2.DIRECTION_INBOUND, wamid=wamid, member_id=MEMBER
    )
    return wa, conv, wamid


async def _reads(graph: httpx.AsyncClient, wa: str) -> list[dict[str, Any]]:
    return [r for r in (await graph.get("/_sandbox/reads")).json()["reads"] if r["wa_id"] == wa]


@pytest.mark.parametrize("replying", [True, False])
async def test_typing_only_ahead_of_a_reply(
    events: OperatorEvents, graph: httpx.AsyncClient, fresh: Fakes, replying: bool
) -> None:
    wa, conv, wamid = await _customer_wrote(graph, fresh)
    read = events_pb2.OperatorRead(
        member_id=MEMBER, external_chat_id=conv.external_chat_id, replying=replying
    )
    env = events_pb2.Envelope(event_id=f"b24-read:{uuid.uuid4().hex}", operator_read=read)
    assert (await events.on_read(env, read)).kind == "ok"
    (mark,) = await _reads(graph, wa)  # on_read returns after Graph answered
    assert mark["message_id"] == wamid and mark["typing_indicator"] is replying


async def test_no_customer_message_recorded_nothing_to_mark(
    events: OperatorEvents, graph: httpx.AsyncClient, fresh: Fakes
) -> None:
    conv = fresh.mapper.add_conversation("4917000000999")
    read = events_pb2.OperatorRead(member_id=MEMBER, external_chat_id=conv.external_chat_id)
    env = events_pb2.Envelope(event_id=f"b24-read:{uuid.uuid4().hex}", operator_read=read)
    assert (await events.on_read(env, read)).kind == "ok"
    assert await _reads(graph, "4917000000999") == []


async def test_a_message_already_marked_is_not_marked_again(
    events: OperatorEvents, graph: httpx.AsyncClient, fresh: Fakes
) -> None:
    wa, conv, first = await _customer_wrote(graph, fresh)

    async def finished() -> None:  # the dialog finished (no typing indicator): a mark only if it is new
        read = events_pb2.OperatorRead(member_id=MEMBER, external_chat_id=conv.external_chat_id)
        env = events_pb2.Envelope(event_id=f"b24-read:{uuid.uuid4().hex}", operator_read=read)
        assert (await events.on_read(env, read)).kind == "ok"

    await finished()
    await finished()
    assert [m["message_id"] for m in await _reads(graph, wa)] == [first]
    later = (await graph.post(f"/_sandbox/customers/{wa}/messages", json={"text": "noch da?"})).json()[
        "wamid"
    ]
    fresh.mapper.links[later] = mapper_pb2.MessageLink(
        conversation_id=conv.id, direction=mapper_pb2.DIRECTION_INBOUND, wamid=later, member_id=MEMBER
    )
    await finished()
    assert [m["message_id"] for m in await _reads(graph, wa)] == [first, later]
    # A reply with the typing indicator marks again: the indicator is what the customer is shown.
    read = events_pb2.OperatorRead(member_id=MEMBER, external_chat_id=conv.external_chat_id, replying=True)
    env = events_pb2.Envelope(event_id=f"b24-read:{uuid.uuid4().hex}", operator_read=read)
    assert (await events.on_read(env, read)).kind == "ok"
    assert [m["typing_indicator"] for m in await _reads(graph, wa)] == [False, False, True]


async def test_an_uninstall_schedules_the_portals_data_for_removal_and_a_line_removal_does_not(
    events: OperatorEvents, fresh: Fakes
) -> None:
    """ONAPPUNINSTALL arrives as LineRemoved with line 0: the mapper records it (retention removes the
    portal's data after the grace period); a redelivery keeps the first time; one removed line changes
    nothing."""
    line = events_pb2.Envelope(
        event_id=f"b24-line-del:{uuid.uuid4().hex}",
        line_removed=events_pb2.LineRemoved(member_id=MEMBER, connector_id="zaptrix", line_id=7),
    )
    assert (await events.on_line_removed(line)).kind == "ok"
    assert MEMBER not in fresh.mapper.uninstalled
    gone = events_pb2.Envelope(
        event_id=f"b24-uninstall:{MEMBER}:1",
        line_removed=events_pb2.LineRemoved(member_id=MEMBER, connector_id="zaptrix", line_id=0),
    )
    gone.occurred_at.FromSeconds(1_790_000_000)
    assert (await events.on_line_removed(gone)).kind == "ok"
    again = events_pb2.Envelope()
    again.CopyFrom(gone)
    again.occurred_at.FromSeconds(1_790_000_100)
    assert (await events.on_line_removed(again)).kind == "ok"
    assert fresh.mapper.uninstalled[MEMBER].timestamp() == 1_790_000_000
