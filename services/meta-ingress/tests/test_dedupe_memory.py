"""What the meta dispatcher remembers: dedupe records it saw in the mapper (the offline copy of an operator
message costs no RPC; nothing unrecorded, or recorded by someone else, is ever taken as done), and a
conversation for a burst to one chat (never for another portal, never past a closed window)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
import pytest
from meta_ingress.dispatcher.context import Context
from meta_ingress.dispatcher.notices import Notice, Notifier
from meta_ingress.dispatcher.records import Records
from meta_ingress.graph.client import GraphClient
from meta_ingress.settings import DispatcherSettings
from meta_support import MEMBER, Fakes
from zaptrix.clients import Clients
from zaptrix.kafka import PermanentError
from zaptrix.settings import GrpcClientSettings
from zaptrix.v1 import mapper_pb2


@pytest.fixture
async def records(fresh: Fakes) -> AsyncIterator[Records]:
    clients = Clients(GrpcClientSettings(mapper_addr=fresh.addr, token_keeper_addr=fresh.addr))
    yield Records(clients)
    await clients.close()


async def test_a_recorded_event_is_answered_from_memory_afterwards(records: Records, fresh: Fakes) -> None:
    assert await records.recorded("b24:m1:1") is None
    assert records.known("b24:m1:1") is None  # "not processed" is never remembered
    await records.mark("b24:m1:1", "wamid.A")
    assert records.known("b24:m1:1") == "wamid.A"
    asked = fresh.mapper.count("CheckProcessed")
    assert await records.recorded("b24:m1:1") == "wamid.A"
    assert fresh.mapper.count("CheckProcessed") == asked  # the copy: no RPC


async def test_only_the_result_the_mapper_kept_is_remembered(records: Records, fresh: Fakes) -> None:
    fresh.mapper.processed["b24:m1:2"] = "wamid.FIRST"  # another replica recorded it first
    await records.mark("b24:m1:2", "wamid.SECOND")
    assert records.known("b24:m1:2") is None
    assert await records.recorded("b24:m1:2") == "wamid.FIRST"
    assert records.known("b24:m1:2") == "wamid.FIRST"


async def test_an_event_recorded_elsewhere_is_learned_from_the_mapper(records: Records, fresh: Fakes) -> None:
    assert await records.recorded("b24:m1:3") is None
    fresh.mapper.processed["b24:m1:3"] = "wamid.C"  # recorded by another replica meanwhile
    assert await records.recorded("b24:m1:3") == "wamid.C"  # the miss was not remembered


@pytest.fixture
async def ctx(fresh: Fakes) -> AsyncIterator[Context]:
    settings = DispatcherSettings(graph_api_base_url="https://graph.test")
    clients = Clients(GrpcClientSettings(mapper_addr=fresh.addr, token_keeper_addr=fresh.addr))
    graph = GraphClient(settings)
    yield Context(settings, clients, graph, Notifier(None, "unused"))  # type: ignore[arg-type]
    await graph.aclose()
    await clients.close()


async def test_a_burst_to_one_chat_looks_its_conversation_up_once(ctx: Context, fresh: Fakes) -> None:
    conv = fresh.mapper.add_conversation("4915100000031")
    for _ in range(5):
        assert (await ctx.conversation(MEMBER, conv.external_chat_id, "message")).id == conv.id
    assert fresh.mapper.count("FindConversation") == 1


async def test_a_remembered_conversation_never_answers_another_portal(ctx: Context, fresh: Fakes) -> None:
    conv = fresh.mapper.add_conversation("4915100000032")
    await ctx.conversation(MEMBER, conv.external_chat_id, "message")
    with pytest.raises(PermanentError, match="cross-tenant"):
        await ctx.conversation("member-2", conv.external_chat_id, "message")


async def test_a_remembered_conversation_whose_window_closed_is_looked_up_again(
    ctx: Context, fresh: Fakes
) -> None:
    conv = fresh.mapper.add_conversation("4915100000033")
    conv.last_customer_message_at.seconds = int(time.time()) - 25 * 3600
    await ctx.conversation(MEMBER, conv.external_chat_id, "message")
    conv.last_customer_message_at.seconds = int(time.time()) - 10  # the customer wrote meanwhile
    fresh_copy = await ctx.conversation(MEMBER, conv.external_chat_id, "message")
    assert fresh.mapper.count("FindConversation") == 2
    assert time.time() - fresh_copy.last_customer_message_at.seconds < 60


async def test_a_reply_is_linked_and_recorded_in_one_call(records: Records, fresh: Fakes) -> None:
    conv = fresh.mapper.add_conversation("4915100000041")
    notice = Notice("b24:m1:41", MEMBER, 1, "zaptrix_whatsapp", "77", "9001", conv.external_chat_id, "k")
    await records.link_and_mark(conv.id, notice, "wamid.ONE", "b24:m1:41", "wamid.ONE")
    assert fresh.mapper.count("RecordDelivery") == 1
    assert fresh.mapper.count("LinkMessage") == fresh.mapper.count("MarkProcessed") == 0
    assert fresh.mapper.processed["b24:m1:41"] == "wamid.ONE"
    link = fresh.mapper.links["wamid.ONE"]
    assert (link.conversation_id, link.bitrix_message_id, link.direction) == (
        conv.id,
        "9001",
        mapper_pb2.DIRECTION_OUTBOUND,
    )
    request = next(r for m, r in fresh.mapper.requests if m == "RecordDelivery")
    assert [f.name for f, _ in request.conversation.ListFields()] == ["id"]  # names it, changes nothing
    assert records.known("b24:m1:41") == "wamid.ONE"


async def test_a_refused_combined_call_records_link_and_dedupe_one_by_one(
    records: Records, fresh: Fakes
) -> None:
    conv = fresh.mapper.add_conversation("4915100000042")
    notice = Notice("b24:m1:42", MEMBER, 1, "zaptrix_whatsapp", "77", "9002", conv.external_chat_id, "k")
    fresh.mapper.fail["RecordDelivery"] = [grpc.StatusCode.PERMISSION_DENIED]  # e.g. a mapper not granting it
    await records.link_and_mark(conv.id, notice, "wamid.TWO", "b24:m1:42", "wamid.TWO")
    assert fresh.mapper.processed["b24:m1:42"] == "wamid.TWO"
    assert "wamid.TWO" in fresh.mapper.links
    assert fresh.mapper.count("LinkMessage") == fresh.mapper.count("MarkProcessed") == 1
