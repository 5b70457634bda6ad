"""C1: operator events are scoped to their portal. Portal B, a genuine tenant with its own valid
application_token, names portal A's chat; nothing reaches A's customer, and nothing about A reaches B.

Portal A is the sandbox portal (its WhatsApp channel, customers and Open Line live in the stand-ins).
Portal B is registered straight in token-keeper (as dev/localsystem.py seeds portals); its REST endpoint
is a small recording HTTP server in this test, so "nothing reached B" is what that server saw.
Some attacks are also played past the web tier (an envelope put on the topic directly, as one the web
process keyed while the mapper was down would be), to show the dispatchers check on their own.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import grpc
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from localsystem import SANDBOX_CLIENT_ID
from zaptrix.kafka import Flow, topics_for
from zaptrix.kafka.envelope import H_EVENT_ID, encode, header, new_envelope
from zaptrix.v1 import events_pb2, mapper_pb2, mapper_pb2_grpc, token_keeper_pb2, token_keeper_pb2_grpc
from zaptrix_testing.seeding import CONNECTOR_ID, SANDBOX_LINE_ID, SANDBOX_MEMBER_ID, SANDBOX_PHONE_NUMBER_ID
from zaptrix_testing.waiting import eventually

from tests.e2e.flows import (
    bind_template,
    chat_messages,
    customer_says,
    external_chat_id,
    operator_says,
    sent_to,
    wait_for_messages,
    wait_sent,
)
from tests.system import System

_numbers = itertools.count(491730000000)
_message_ids = itertools.count(970000)
B_TOKEN = "portal-b-application-token"


@dataclass
class Recorder:
    """Portal B's REST endpoint: records every request and answers like an empty Bitrix24."""

    port: int = 0
    requests: list[str] = field(default_factory=list)
    queue_polls: list[str] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(m.group(1)) if (m := re.search(rb"(?i)content-length:\s*(\d+)", head)) else 0
            body = await reader.readexactly(length) if length else b""
            request = (head + body).decode(errors="replace")
            # bitrix-dispatcher's offline-event reconciler polls every installed portal's own queue (B's,
            # with B's token): not about A, so kept apart from what the assertions look at.
            polls = ("POST /rest/feature.get ", "POST /rest/event.offline.")
            (self.queue_polls if request.startswith(polls) else self.requests).append(request)
            answer = json.dumps({"result": {}, "time": {}}).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                + f"Content-Length: {len(answer)}\r\n\r\n".encode()
                + answer
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def saw(self, *needles: str) -> list[str]:
        return [r for r in self.requests if any(n and n in r for n in needles)]


@dataclass
class PortalB:
    member_id: str
    recorder: Recorder


@pytest.fixture
async def portal_b(system: System) -> AsyncIterator[PortalB]:
    recorder = Recorder()
    server = await asyncio.start_server(recorder.handle, "127.0.0.1", 0)
    recorder.port = server.sockets[0].getsockname()[1]
    member_id = f"portal-b-{uuid.uuid4().hex[:8]}"
    expires = datetime.now(UTC) + timedelta(hours=1)
    request = token_keeper_pb2.UpsertPortalRequest(
        member_id=member_id,
        domain="b.example",
        client_endpoint=f"http://127.0.0.1:{recorder.port}/rest/",
        client_id=SANDBOX_CLIENT_ID,
        client_secret="portal-b-client-secret",
        access_token="portal-b-access-token",
        refresh_token="portal-b-refresh-token",
        application_token=B_TOKEN,
    )
    request.access_expires_at.FromDatetime(expires)
    async with system.local.grpc_channel("token-keeper") as channel:
        await token_keeper_pb2_grpc.TokenKeeperStub(channel).UpsertPortal(request, timeout=5)
    try:
        yield PortalB(member_id, recorder)
    finally:
        server.close()
        await server.wait_closed()


async def customer_of_a(system: System, name: str = "Anna Opfer") -> tuple[str, str, str]:
    """A customer of portal A who wrote (window open): (wa_id, A's external chat id, the wamid)."""
    wa_id = str(next(_numbers))
    sent = await customer_says(system, wa_id, type="text", text="Hallo", name=name)
    await wait_for_messages(system, wa_id, 1)
    return wa_id, await external_chat_id(system, wa_id), str(sent["wamid"])


def form(event: str, member_id: str, data: dict[str, str]) -> str:
    pairs = {
        "event": event,
        "ts": str(int(datetime.now(UTC).timestamp())),
        "auth[member_id]": member_id,
        "auth[application_token]": B_TOKEN,
        "auth[domain]": "b.example",
        "data[CONNECTOR]": CONNECTOR_ID,
        "data[LINE]": str(SANDBOX_LINE_ID),
    }
    return urlencode(pairs | data)


def message_item(chat: str, text: str, index: int = 0) -> dict[str, str]:
    p = f"data[MESSAGES][{index}]"
    mid = str(next(_message_ids))
    return {
        f"{p}[im][chat_id]": "9001",
        f"{p}[im][message_id]": mid,
        f"{p}[message][id][0]": mid,
        f"{p}[message][text]": text,
        f"{p}[message][user_id]": "1",
        f"{p}[chat][id]": chat,
    }


async def post_as_b(system: System, body: str) -> int:
    resp = await system.bitrix_web.post(
        "/webhooks/bitrix24/outbound",
        content=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    return resp.status_code


async def inject(system: System, env: events_pb2.Envelope, flow: Flow = Flow.B24_TO_WA) -> None:
    """An envelope put on the topic directly, past the web tier's checks."""
    key, value, headers = encode(env)
    producer = AIOKafkaProducer(bootstrap_servers=system.kafka.bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(
            topics_for(flow, system.kafka.topic_prefix).main, value, key, headers=headers
        )
    finally:
        await producer.stop()


async def dead_letter_reason(system: System, event_id: str, timeout_s: float = 30) -> str:
    topic = topics_for(Flow.B24_TO_WA, system.kafka.topic_prefix).dlq
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=system.kafka.bootstrap_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for r in records:
                        if header(r.headers, H_EVENT_ID) == event_id:
                            return header(r.headers, "zaptrix-dlq-reason") or ""
    finally:
        await consumer.stop()


def texts(sent: list[dict[str, Any]]) -> list[str]:
    return [s["payload"]["text"]["body"].split("\n")[-1] for s in sent if s["payload"].get("type") == "text"]


# --- (a) messages ---------------------------------------------------------------------------------------


async def test_portal_b_message_naming_a_chat_is_refused_and_reaches_no_customer(
    system: System, portal_b: PortalB
) -> None:
    wa_id, chat, _ = await customer_of_a(system)
    status = await post_as_b(
        system, form("ONIMCONNECTORMESSAGEADD", portal_b.member_id, message_item(chat, "Phishing von B"))
    )
    assert 400 <= status < 500, f"portal B's event naming A's chat was answered {status}"
    await operator_says(system, wa_id, "echt")  # a barrier in the same conversation
    await wait_sent(system, wa_id)
    assert texts(await sent_to(system, wa_id)) == ["echt"]


async def test_a_forged_operator_message_past_the_web_tier_is_dead_lettered_as_cross_tenant(
    system: System, portal_b: PortalB
) -> None:
    wa_id, chat, _ = await customer_of_a(system)
    event_id = f"b24:{portal_b.member_id}:{next(_message_ids)}"
    forged = events_pb2.OperatorMessage(
        member_id=portal_b.member_id,
        connector_id=CONNECTOR_ID,
        line_id=SANDBOX_LINE_ID,
        bitrix_chat_id="9001",
        bitrix_message_id=event_id.rsplit(":", 1)[1],
        external_chat_id=chat,
        text_bbcode="Phishing von B",
    )
    await inject(system, new_envelope(event_id, chat, events_pb2.PLATFORM_BITRIX24, operator_message=forged))
    assert "cross-tenant" in await dead_letter_reason(system, event_id)
    await operator_says(system, wa_id, "echt")
    await wait_sent(system, wa_id)
    assert texts(await sent_to(system, wa_id)) == ["echt"]
    assert not portal_b.recorder.requests, "nothing about A's conversation may reach portal B"


# --- (b) re-engagement template -------------------------------------------------------------------------


async def test_portal_b_cannot_trigger_a_reengagement_template(system: System, portal_b: PortalB) -> None:
    await system.graph.post("/_sandbox/config", json={"window_error_mode": "sync"})
    await bind_template(system, "hello_world")
    try:
        await asyncio.sleep(1.5)  # the dispatcher's channel cache (0.5 s in these tests)
        wa_id, chat, _ = await customer_of_a(system)
        await system.graph.post(
            "/_sandbox/config", json={"customers": [{"wa_id": wa_id, "last_inbound_ago_s": 90000}]}
        )
        status = await post_as_b(
            system, form("ONIMCONNECTORMESSAGEADD", portal_b.member_id, message_item(chat, "Noch Interesse?"))
        )
        assert 400 <= status < 500
        event_id = f"b24:{portal_b.member_id}:{next(_message_ids)}"
        forged = events_pb2.OperatorMessage(
            member_id=portal_b.member_id,
            connector_id=CONNECTOR_ID,
            line_id=SANDBOX_LINE_ID,
            bitrix_message_id=event_id.rsplit(":", 1)[1],
            external_chat_id=chat,
            text_bbcode="Noch Interesse?",
        )
        await inject(
            system, new_envelope(event_id, chat, events_pb2.PLATFORM_BITRIX24, operator_message=forged)
        )
        assert "cross-tenant" in await dead_letter_reason(system, event_id)
        # A's own operator, afterwards in the same conversation: now the template goes out (the barrier).
        await operator_says(system, wa_id, "Noch Interesse?")

        async def templates() -> list[dict[str, Any]]:
            return [
                s
                for s in await sent_to(system, wa_id)
                if s["payload"].get("type") == "template" and s["http_status"] == 200
            ]

        async def one() -> bool:
            return len(await templates()) >= 1

        await eventually(one, 45, "A's own re-engagement template")
        assert len(await templates()) == 1, "B's events spent A's template (or its cooldown)"
    finally:
        await bind_template(system, "")
        await system.graph.post("/_sandbox/config", json={"window_error_mode": "async"})


# --- (c) reads ------------------------------------------------------------------------------------------


async def test_portal_b_cannot_mark_a_customers_messages_read(system: System, portal_b: PortalB) -> None:
    wa_id, chat, wamid = await customer_of_a(system)
    finish = {"data[MESSAGES][0][connector][chat_id]": chat, "data[MESSAGES][0][chat][id]": "9001"}
    assert 400 <= await post_as_b(system, form("ONIMCONNECTORDIALOGFINISH", portal_b.member_id, finish)) < 500
    key = f"{SANDBOX_PHONE_NUMBER_ID}:{wa_id}"
    forged = events_pb2.OperatorRead(member_id=portal_b.member_id, external_chat_id=chat, wamids=[wamid])
    forged_id = f"b24-read:{portal_b.member_id}:{uuid.uuid4().hex}"
    await inject(system, new_envelope(forged_id, key, events_pb2.PLATFORM_BITRIX24, operator_read=forged))
    assert "cross-tenant" in await dead_letter_reason(system, forged_id)
    own = events_pb2.OperatorRead(member_id=SANDBOX_MEMBER_ID, external_chat_id=chat, wamids=[wamid])
    await inject(
        system,
        new_envelope(f"b24-read:a:{uuid.uuid4().hex}", key, events_pb2.PLATFORM_BITRIX24, operator_read=own),
    )

    async def reads() -> list[dict[str, Any]]:
        data = (await system.graph.get("/_sandbox/reads")).json()["reads"]
        return [r for r in data if r["message_id"] == wamid]

    async def marked() -> bool:
        return bool(await reads())

    await eventually(marked, 30, "A's own read mark (the barrier)")
    assert len(await reads()) == 1, "B's read marked A's customer's message"


# --- (d) edits and deletes ------------------------------------------------------------------------------


@pytest.mark.parametrize("event", ["ONIMCONNECTORMESSAGEUPDATE", "ONIMCONNECTORMESSAGEDELETE"])
async def test_portal_b_edit_or_delete_does_not_touch_a_messages(
    system: System, portal_b: PortalB, event: str
) -> None:
    wa_id, chat, _ = await customer_of_a(system, name="Berta Geheim")
    reply = await operator_says(system, wa_id, "Original")
    await wait_sent(system, wa_id)
    item = message_item(chat, "geändert von B")
    item["data[MESSAGES][0][im][message_id]"] = str(reply["im"]["message_id"])
    assert 400 <= await post_as_b(system, form(event, portal_b.member_id, item)) < 500
    await operator_says(system, wa_id, "danach")
    await wait_sent(system, wa_id, 2)
    assert texts(await sent_to(system, wa_id)) == ["Original", "danach"]
    assert not portal_b.recorder.saw(wa_id, "Berta", "Geheim"), portal_b.recorder.requests


# --- (e) failure notices --------------------------------------------------------------------------------


async def test_a_failure_notice_about_a_conversation_never_reaches_portal_b(
    system: System, portal_b: PortalB
) -> None:
    wa_id, chat, _ = await customer_of_a(system, name="Clara Vertraulich")
    await system.graph.post("/_sandbox/config", json={"window_error_mode": "sync"})
    try:
        await system.graph.post(
            "/_sandbox/config", json={"customers": [{"wa_id": wa_id, "last_inbound_ago_s": 90000}]}
        )
        key = f"{SANDBOX_PHONE_NUMBER_ID}:{wa_id}"
        # 1. an operator message in B's name that fails (window closed): the notice would name A's customer
        event_id = f"b24:{portal_b.member_id}:{next(_message_ids)}"
        forged = events_pb2.OperatorMessage(
            member_id=portal_b.member_id,
            connector_id=CONNECTOR_ID,
            line_id=SANDBOX_LINE_ID,
            bitrix_message_id=event_id.rsplit(":", 1)[1],
            external_chat_id=chat,
            text_bbcode="Wer bist du?",
        )
        await inject(
            system, new_envelope(event_id, key, events_pb2.PLATFORM_BITRIX24, operator_message=forged)
        )
        # 2. a SendFailure that claims B's portal for A's chat, straight onto the notice flow
        failure = events_pb2.SendFailure(
            member_id=portal_b.member_id,
            connector_id=CONNECTOR_ID,
            line_id=SANDBOX_LINE_ID,
            external_chat_id=chat,
            notice="Not delivered",
        )
        sf_id = f"wa-fail:{portal_b.member_id}:{uuid.uuid4().hex}"
        await inject(
            system,
            new_envelope(sf_id, key, events_pb2.PLATFORM_WHATSAPP, send_failure=failure),
            Flow.WA_TO_B24,
        )
        # A's own operator, afterwards: A's notice appears in A's chat (the barrier).
        await operator_says(system, wa_id, "Noch Interesse?")

        async def notice_in_a() -> bool:
            return any(
                "24 hours" in m["text"] and m["direction"] != "operator"
                for m in await chat_messages(system, wa_id)
            )

        await eventually(notice_in_a, 45, "A's own notice in A's chat")
    finally:
        await system.graph.post("/_sandbox/config", json={"window_error_mode": "async"})
    leaked = portal_b.recorder.saw(wa_id, "Clara", "Vertraulich", chat)
    assert not leaked, f"portal B learned about A's customer: {leaked[:1]}"
    assert not portal_b.recorder.requests


# --- (f) chat ids ---------------------------------------------------------------------------------------


async def test_a_new_external_chat_id_is_not_derivable_from_the_numbers(system: System) -> None:
    wa_id, chat, _ = await customer_of_a(system)
    assert re.fullmatch(r"wa_[A-Za-z0-9]{22,}", chat), chat
    assert wa_id not in chat and SANDBOX_PHONE_NUMBER_ID not in chat
    assert chat != f"wa_{SANDBOX_PHONE_NUMBER_ID}_{wa_id}"
    # and the mapper answers for it only to its own portal
    async with system.local.grpc_channel("mapper") as channel:
        stub = mapper_pb2_grpc.MapperStub(channel)

        def by(member: str) -> mapper_pb2.FindConversationRequest:
            return mapper_pb2.FindConversationRequest(
                portal_external_chat=mapper_pb2.PortalExternalChat(member_id=member, external_chat_id=chat)
            )

        assert (await stub.FindConversation(by(SANDBOX_MEMBER_ID), timeout=5)).wa_id == wa_id
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.FindConversation(by("some-other-portal"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
