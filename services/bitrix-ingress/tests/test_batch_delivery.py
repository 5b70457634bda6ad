"""The dispatcher's batch handler against in-memory gRPC fakes and a scripted Bitrix24 (httpx mock)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from aiokafka import AIOKafkaConsumer
from bitrix_ingress.bitrix_rest.client import BitrixRest
from bitrix_ingress.bitrix_rest.pacing import PacerRegistry
from bitrix_ingress.bitrix_rest.portal import PortalClient
from bitrix_ingress.deps import Deps
from bitrix_ingress.dispatcher import bookkeeping
from bitrix_ingress.dispatcher.batch_handler import BitrixDispatcher
from bitrix_ingress.dispatcher.dead_letters import CustomerDeadLetters
from bitrix_ingress.formparse import as_list
from bitrix_ingress.settings import DispatcherSettings
from bitrix_support import FakeBitrix
from opentelemetry import trace
from zaptrix.clients import Clients
from zaptrix.kafka import EventConsumer, EventProducer, Flow, Received, new_envelope, topics_for
from zaptrix.settings import GrpcClientSettings, KafkaSettings
from zaptrix.v1 import events_pb2, mapper_pb2
from zaptrix_testing.fakes import GrpcFakes, Portal

tracer = trace.get_tracer("test")


@dataclass
class Harness:
    fakes: GrpcFakes
    bitrix: FakeBitrix
    make: Callable[..., BitrixDispatcher]

    async def run(self, records: list[Received], **settings: Any) -> list[str]:
        outcomes = await self.make(**settings).handle(records)
        return [o.kind for o in outcomes]


@pytest.fixture
async def h(fakes: GrpcFakes) -> AsyncIterator[Harness]:
    fakes.token_keeper.add(Portal("m1", "apptok", access_token="access-1"))
    fakes.mapper.bind("100", "m1", 7)
    bitrix = FakeBitrix()
    clients = Clients(GrpcClientSettings(mapper_addr=fakes.addr, token_keeper_addr=fakes.addr))
    deps = Deps(clients)
    made: list[BitrixRest] = []

    def make(**kw: Any) -> BitrixDispatcher:
        settings = DispatcherSettings(**{"bitrix_rate_per_s": 100.0, "bitrix_burst": 50, **kw})
        rest = BitrixRest(transport=bitrix.transport())
        made.append(rest)
        portals = PortalClient(
            deps,
            rest,
            PacerRegistry(settings.rate_for),
            settings,
            attempts=2,
            backoff_initial_s=0.01,
            backoff_max_s=0.02,
            rate_limit_max_wait_s=settings.bitrix_rate_limit_max_wait_s,
        )
        return BitrixDispatcher(settings, deps, portals)

    yield Harness(fakes, bitrix, make)
    for rest in made:
        await rest.aclose()
    await clients.close()


def received(env: events_pb2.Envelope, offset: int = 0) -> Received:
    return Received(
        env,
        "t",
        0,
        offset,
        env.conversation_key.encode(),
        env.SerializeToString(),
        [],
        1,
        tracer.start_span("r"),
    )


def customer(wa_id: str, n: int, *, pnid: str = "100", name: str = "Anna Schmidt", **kw: Any) -> Received:
    cm = events_pb2.CustomerMessage(
        phone_number_id=pnid,
        wa_id=wa_id,
        profile_name=name,
        wamid=f"wamid.{wa_id}.{n}",
        type="text",
        text=f"hello {n}",
        **kw,
    )
    cm.sent_at.FromSeconds(1_700_000_000 + n)
    env = new_envelope(f"wa:{cm.wamid}", f"{pnid}:{wa_id}", events_pb2.PLATFORM_WHATSAPP, customer_message=cm)
    return received(env, n)


def status(wamid: str, value: str, wa_id: str = "4917", **kw: Any) -> Received:
    st = events_pb2.WhatsAppStatus(phone_number_id="100", wa_id=wa_id, wamid=wamid, status=value, **kw)
    st.at.FromSeconds(1_700_000_100)
    env = new_envelope(
        f"wa-status:{wamid}:{value}", f"100:{wa_id}", events_pb2.PLATFORM_WHATSAPP, whatsapp_status=st
    )
    return received(env)


def outbound_link(h: Harness, wa_id: str = "4917", wamid: str = "wamid.out1") -> mapper_pb2.Conversation:
    conv = h.fakes.mapper.add_conversation("100", wa_id, "Anna")
    h.fakes.mapper.links[wamid] = mapper_pb2.MessageLink(
        conversation_id=conv.id,
        direction=mapper_pb2.DIRECTION_OUTBOUND,
        wamid=wamid,
        member_id="m1",
        bitrix_message_id="86497",
        bitrix_chat_id="1807",
    )
    return conv


async def test_many_messages_few_requests_in_conversation_order(h: Harness) -> None:
    records = [customer(f"49170{c}", n) for n in range(12) for c in range(10)]  # 10 customers, interleaved
    assert await h.run(records) == ["ok"] * 120
    # CRM: one batch of look-ups, one batch of creations; messages: 50+50 in one batch, then a call of 20.
    assert [r.method for r in h.bitrix.requests] == ["batch", "batch", "batch", "imconnector.send.messages"]
    sent = h.bitrix.sent_messages()
    assert len(sent) == 120
    for c in range(10):
        ids = [m["message"]["id"] for m in sent if m["user"]["id"] == f"49170{c}"]
        assert ids == [f"wamid.49170{c}.{n}" for n in range(12)]
    assert len(h.bitrix.contacts) == 10  # exactly one contact per new customer
    # bookkeeping: one RecordDeliveries per request that carried messages (100, then 20); one
    # CheckProcessedMany for the batch; a conversation is asked for once per customer (then known);
    # UpdateConversation only stores the 10 new contacts
    calls = h.fakes.mapper.calls
    assert h.fakes.mapper.count("RecordDeliveries") == 2
    assert sum(1 for c in calls if c.startswith("RecordDeliveries.item:")) == 120
    assert [h.fakes.mapper.count(m) for m in ("RecordDelivery", "CheckProcessed")] == [0, 0]
    assert h.fakes.mapper.count("CheckProcessedMany") == 1
    assert h.fakes.mapper.count("GetOrCreateConversation") == 10
    separate = [h.fakes.mapper.count(m) for m in ("MarkProcessed", "LinkMessage", "UpdateConversation")]
    assert separate == [0, 0, 10]
    assert len(h.fakes.mapper.links) == 120 and len(h.fakes.mapper.processed) == 120
    conv = h.fakes.mapper.by_customer("100", "491700")
    assert conv is not None and conv.bitrix_chat_id and conv.bitrix_contact_id
    assert conv.last_customer_message_at.seconds == 1_700_000_011
    first = sent[0]
    assert first["user"] == {"id": "491700", "name": "Anna", "last_name": "Schmidt", "phone": "+491700"}
    assert first["chat"]["id"] == conv.external_chat_id


async def test_a_redelivered_message_is_not_sent_twice(h: Harness) -> None:
    records = [customer("4917", n) for n in range(3)]
    assert await h.run(records) == ["ok"] * 3
    before = len(h.bitrix.calls)
    recorded = h.fakes.mapper.count("RecordDelivery")
    assert await h.run([customer("4917", n) for n in range(3)]) == ["duplicate"] * 3
    assert len(h.bitrix.calls) == before  # nothing reached Bitrix24 again
    assert h.fakes.mapper.count("RecordDelivery") == recorded + 3  # bookkeeping redone (idempotent)
    assert h.fakes.mapper.count("CheckProcessedMany") == 2  # one per batch, none per message


async def test_a_failed_record_delivery_still_marks_the_message_processed(h: Harness) -> None:
    # RecordDelivery is all or nothing: when it fails, MarkProcessed alone keeps a redelivery from
    # sending the message again.
    h.fakes.mapper.fail["RecordDelivery"] = [grpc.StatusCode.NOT_FOUND]  # not retried in place
    outcomes = await h.make().handle([customer("4917", 1)])
    assert [o.kind for o in outcomes] == ["dead"], [o.reason for o in outcomes]
    assert h.fakes.mapper.count("MarkProcessed") == 1 and not h.fakes.mapper.links
    before = len(h.bitrix.sent_messages())
    assert await h.run([customer("4917", 1)]) == ["duplicate"]
    assert len(h.bitrix.sent_messages()) == before == 1
    assert "wamid.4917.1" in h.fakes.mapper.links  # the bookkeeping was redone from the recorded result


async def test_returning_customer_is_found_not_created(h: Harness) -> None:
    h.bitrix.contacts[77] = "4917"
    assert await h.run([customer("4917", 1), customer("4917", 2)]) == ["ok", "ok"]
    assert "crm.contact.add" not in h.bitrix.methods()
    assert [m for m in h.bitrix.methods() if m.startswith("crm.")] == ["crm.duplicate.findbycomm"]
    conv = h.fakes.mapper.by_customer("100", "4917")
    assert conv is not None and conv.bitrix_contact_id == "77"
    assert await h.run([customer("4917", 3)]) == ["ok"]
    assert [m for m in h.bitrix.methods() if m.startswith("crm.")] == [
        "crm.duplicate.findbycomm"
    ]  # remembered


async def test_open_line_mode_leaves_crm_to_the_tracker(h: Harness) -> None:
    h.fakes.mapper.bind("100", "m1", 7, crm_mode=mapper_pb2.CRM_MODE_OPEN_LINE)
    assert await h.run([customer("4917", 1)]) == ["ok"]
    assert not [m for m in h.bitrix.methods() if m.startswith("crm.")]
    assert h.bitrix.sent_messages()[0]["user"]["phone"] == "+4917"


async def test_crm_without_scope_still_delivers(h: Harness) -> None:
    h.bitrix.script["crm.duplicate.findbycomm"] = [(403, {"error": "insufficient_scope"})]
    assert await h.run([customer("4917", 1)]) == ["ok"]
    assert len(h.bitrix.sent_messages()) == 1


async def test_one_bad_message_is_isolated_by_bisecting(h: Harness) -> None:
    h.bitrix.bad_message_ids = {"wamid.c.1"}
    records = [customer(w, 1) for w in ("a", "b", "c", "d", "e")]
    outcomes = await h.make().handle(records)
    assert [o.kind for o in outcomes] == ["ok", "ok", "dead", "ok", "ok"]
    assert "ERROR_ARGUMENT" in outcomes[2].reason
    delivered = [m["message"]["id"] for m in h.bitrix.sent_messages()]
    assert sorted(set(delivered)) == ["wamid.a.1", "wamid.b.1", "wamid.d.1", "wamid.e.1"]
    assert delivered.count("wamid.a.1") == 1  # the bad call failed whole: nothing was stored twice


async def test_a_failure_holds_the_rest_of_its_conversation(h: Harness) -> None:
    h.fakes.mapper.fail_if.append(
        ("GetOrCreateConversation", lambda r: r.wa_id == "a", grpc.StatusCode.UNAVAILABLE)
    )
    outcomes = await h.make().handle([customer("a", 1), customer("a", 2), customer("b", 1)])
    # "held": the consumer puts it behind a/1's pending retry without counting an attempt (issue 13).
    assert [o.kind for o in outcomes] == ["retry", "held", "ok"]
    assert "held behind" in outcomes[1].reason
    assert [m["message"]["id"] for m in h.bitrix.sent_messages()] == ["wamid.b.1"]
    # A status waiting for its link does not hold the customer's messages.
    outcomes = await h.make().handle([status("wamid.not-yet", "delivered", wa_id="c"), customer("c", 1)])
    assert [o.kind for o in outcomes] == ["retry", "ok"]


async def test_transient_bitrix_failure_retries_and_keeps_order(h: Harness) -> None:
    h.bitrix.script["batch"] = [(500, {"error": "INTERNAL_SERVER_ERROR"})] * 2
    records = [customer("a", n) for n in range(60)]  # two calls in one batch request
    outcomes = await h.make().handle(records)
    # The first message is retried; the later ones of its conversation wait behind it, uncounted.
    assert [o.kind for o in outcomes] == ["retry"] + ["held"] * 59
    assert h.bitrix.sent_messages() == []


async def test_per_message_failure_is_retried(h: Harness) -> None:
    h.bitrix.per_message_failures = {"wamid.a.1"}
    outcomes = await h.make().handle([customer("a", 1), customer("b", 1)])
    assert [o.kind for o in outcomes] == ["retry", "ok"] and "could not save the file" in outcomes[0].reason
    assert "wa:wamid.a.1" not in h.fakes.mapper.processed


async def test_inactive_line_is_dead_lettered(h: Harness) -> None:
    h.fakes.mapper.bind("100", "m1", 7, crm_mode=mapper_pb2.CRM_MODE_OPEN_LINE)
    h.bitrix.script["imconnector.send.messages"] = [
        (400, {"error": "NOT_ACTIVE_LINE", "error_description": "inactive"})
    ]
    outcomes = await h.make().handle([customer("a", 1)])
    assert outcomes[0].kind == "dead" and "NOT_ACTIVE_LINE" in outcomes[0].reason


async def test_unknown_channel_is_dead_lettered(h: Harness) -> None:
    outcomes = await h.make().handle([customer("a", 1, pnid="999")])
    assert outcomes[0].kind == "dead" and "999" in outcomes[0].reason


async def test_batch_refused_for_imconnector_falls_back_to_single_calls(h: Harness) -> None:
    h.fakes.mapper.bind("200", "m1", 8, crm_mode=mapper_pb2.CRM_MODE_OPEN_LINE)
    h.fakes.mapper.bind("100", "m1", 7, crm_mode=mapper_pb2.CRM_MODE_OPEN_LINE)
    h.bitrix.refuse_imconnector_in_batch = True
    d = h.make()
    records = [customer("a", 1), customer("b", 1, pnid="200")]
    assert [o.kind for o in await d.handle(records)] == ["ok", "ok"]
    assert [r.method for r in h.bitrix.requests] == [
        "batch",
        "imconnector.send.messages",
        "imconnector.send.messages",
    ]
    h.bitrix.requests.clear()
    assert [o.kind for o in await d.handle([customer("a", 2), customer("b", 2, pnid="200")])] == ["ok", "ok"]
    assert [r.method for r in h.bitrix.requests] == ["imconnector.send.messages"] * 2  # remembered per portal


async def test_expired_token_mid_flow(h: Harness) -> None:
    d = h.make()
    assert [o.kind for o in await d.handle([customer("a", 1)])] == ["ok"]
    h.bitrix.expired_tokens.add("access-1")
    h.bitrix.valid_tokens.add("access-1-r")
    assert [o.kind for o in await d.handle([customer("a", 2), customer("b", 1)])] == ["ok", "ok"]
    assert len(h.fakes.token_keeper.rejections) == 1


async def test_delivered_status_reaches_bitrix_once(h: Harness) -> None:
    conv = outbound_link(h)
    assert await h.run([status("wamid.out1", "sent")]) == ["ok"]
    assert await h.run([status("wamid.out1", "delivered")]) == ["ok"]
    (call,) = [c for c in h.bitrix.calls if c.method == "imconnector.send.status.delivery"]
    (item,) = as_list(call.params["MESSAGES"])
    assert item["im"] == {"chat_id": "1807", "message_id": "86497"}
    assert as_list(item["message"]["id"]) == ["wamid.out1"] and str(item["message"]["date"]) == "1700000100"
    assert item["chat"] == {"id": conv.external_chat_id}
    link = h.fakes.mapper.links["wamid.out1"]
    assert (link.whatsapp_status, link.bitrix_status) == ("delivered", "delivered")
    assert await h.run([status("wamid.out1", "delivered")]) == ["ok"]  # Meta sent it again
    assert await h.run([status("wamid.out1", "read")]) == ["ok"]
    assert await h.run([status("wamid.out1", "played")]) == ["ok"]  # a voice note: read already
    assert [c.method for c in h.bitrix.calls if c.method.startswith("imconnector.send.status")] == [
        "imconnector.send.status.delivery",
        "imconnector.send.status.reading",
    ]
    assert h.fakes.mapper.links["wamid.out1"].whatsapp_status == "read"


async def test_read_before_delivered_reports_delivery_then_reading(h: Harness) -> None:
    outbound_link(h)
    assert await h.run([status("wamid.out1", "read")]) == ["ok"]
    assert [c.method for c in h.bitrix.calls] == [
        "imconnector.send.status.delivery",
        "imconnector.send.status.reading",
    ]
    assert h.fakes.mapper.links["wamid.out1"].bitrix_status == "read"
    # One event, recorded once (it rode in two calls), with its link update: no MarkProcessed of its own.
    assert h.fakes.mapper.count("UpdateMessageStatuses") == 1 and h.fakes.mapper.count("MarkProcessed") == 0
    assert [e for e in h.fakes.mapper.processed if e.startswith("wa-status:")] == [
        "wa-status:wamid.out1:read"
    ]
    assert await h.run([status("wamid.out1", "delivered")]) == ["ok"]  # late: already reported
    assert len([c for c in h.bitrix.calls if c.method == "imconnector.send.status.delivery"]) == 1


async def test_read_is_not_sent_when_reading_receipts_are_off(h: Harness) -> None:
    outbound_link(h)
    d = h.make(bitrix_send_read_status=False)
    assert [o.kind for o in await d.handle([status("wamid.out1", "read")])] == ["ok"]
    assert [c.method for c in h.bitrix.calls] == ["imconnector.send.status.delivery"]


async def test_statuses_of_unknown_messages_are_acknowledged(h: Harness) -> None:
    rec = status("wamid.someone-else", "delivered")
    assert await h.run([rec]) == ["retry"]  # the link may just not be recorded yet
    rec.attempt = DispatcherSettings().status_link_attempts
    assert await h.run([rec]) == ["ok"]
    assert h.bitrix.calls == []


async def test_a_status_faster_than_its_link_is_reported_once_the_link_exists(h: Harness) -> None:
    rec = status("wamid.out1", "delivered")
    assert await h.run([rec]) == ["retry"]
    outbound_link(h)
    rec.attempt = 2
    assert await h.run([rec]) == ["ok"]
    assert [c.method for c in h.bitrix.calls] == ["imconnector.send.status.delivery"]


async def test_failed_status_becomes_a_visible_notice(h: Harness) -> None:
    conv = outbound_link(h)
    err = events_pb2.GraphError(code=131047, title="Re-engagement message")
    via = {"bitrix_notice_via": "connector"}  # the fallback path; the default im path: test_notice_via_im_*
    assert await h.run([status("wamid.out1", "failed", errors=[err])], **via) == ["ok"]
    (notice,) = h.bitrix.sent_messages()
    assert notice["chat"]["id"] == conv.external_chat_id and notice["user"]["name"] == "Anna"
    text = notice["message"]["text"]  # under the customer's name: says plainly it is not theirs
    assert text.startswith("⚠️ Zaptrix: [i](a notice from Zaptrix, not written by the customer)[/i]")
    assert "Not delivered to WhatsApp: more than 24 hours" in text
    assert notice["message"]["disable_crm"] == "Y"
    link = h.fakes.mapper.links["wamid.out1"]
    assert (link.whatsapp_status, link.bitrix_status) == ("failed", "failed")


async def test_send_failure_notice(h: Harness) -> None:
    conv = h.fakes.mapper.add_conversation("100", "4917", "Anna")
    sf = events_pb2.SendFailure(
        member_id="m1",
        line_id=7,
        connector_id="zaptrix_whatsapp",
        bitrix_chat_id="1807",
        bitrix_message_id="86497",
        external_chat_id=conv.external_chat_id,
        error=events_pb2.GraphError(code=131047, title="Re-engagement message"),
        template_sent=True,
    )
    env = new_envelope("wa-fail:b24:m1:86497", "100:4917", events_pb2.PLATFORM_WHATSAPP, send_failure=sf)
    assert await h.run([received(env)]) == ["ok"]
    (call,) = [c for c in h.bitrix.calls if c.method == "im.message.add"]  # a system message, by default
    assert call.params["DIALOG_ID"] == "chat1807" and call.params["SYSTEM"] == "Y"
    assert "template was sent instead" in call.params["MESSAGE"]
    assert await h.run([received(env)]) == ["duplicate"]
    assert len([c for c in h.bitrix.calls if c.method == "im.message.add"]) == 1
    assert h.bitrix.sent_messages() == []  # nothing under the customer's name


@pytest.mark.parametrize("claimed", ["m2", ""])
async def test_a_send_failure_claiming_another_portal_is_refused_and_posted_nowhere(
    h: Harness, claimed: str
) -> None:
    h.fakes.token_keeper.add(Portal("m2", "apptok-m2", access_token="access-2"))
    conv = h.fakes.mapper.add_conversation("100", "4917", "Anna")  # portal m1's customer
    sf = events_pb2.SendFailure(
        member_id=claimed, line_id=7, connector_id="zaptrix_whatsapp", external_chat_id=conv.external_chat_id
    )
    env = new_envelope(f"wa-fail:{claimed}:1", "100:4917", events_pb2.PLATFORM_WHATSAPP, send_failure=sf)
    outcomes = await h.make().handle([received(env)])
    assert [o.kind for o in outcomes] == ["dead"]
    assert outcomes[0].reason.startswith("cross-tenant:")
    assert h.bitrix.calls == []  # neither the claimed portal nor the conversation's own


async def test_notice_via_im_message_add(h: Harness) -> None:
    outbound_link(h)
    assert await h.run([status("wamid.out1", "failed")], bitrix_notice_via="im") == ["ok"]
    (call,) = h.bitrix.calls
    assert (
        call.method == "im.message.add"
        and call.params["DIALOG_ID"] == "chat1807"
        and call.params["SYSTEM"] == "Y"
    )


async def test_a_refused_im_notice_goes_through_the_connector(h: Harness) -> None:
    outbound_link(h)
    h.bitrix.script["im.message.add"] = [(403, {"error": "ACCESS_DENIED"})]
    assert await h.run([status("wamid.out1", "failed")], bitrix_notice_via="im") == ["ok"]
    assert [r.method for r in h.bitrix.requests] == ["im.message.add", "imconnector.send.messages"]
    assert list(h.fakes.mapper.processed.values()) == ["notice:connector"]


async def test_a_message_bitrix_refuses_holds_the_later_ones_of_its_conversation(h: Harness) -> None:
    h.fakes.mapper.bind("100", "m1", 7, crm_mode=mapper_pb2.CRM_MODE_OPEN_LINE)
    h.bitrix.bad_message_ids = {"wamid.a.1"}
    one_by_one = {"bitrix_use_batch": False, "bitrix_max_messages_per_call": 1}
    outcomes = await h.make(**one_by_one).handle([customer("a", 1), customer("a", 2), customer("b", 1)])
    assert [o.kind for o in outcomes] == ["dead", "held", "ok"]
    assert "an earlier message failed" in outcomes[1].reason
    assert [m["message"]["id"] for m in h.bitrix.sent_messages()] == ["wamid.b.1"]


async def test_the_recorded_delivery_names_the_crm_contact_found(h: Harness) -> None:
    h.bitrix.contacts[77] = "4917"
    assert await h.run([customer("4917", 1)]) == ["ok"]
    (recorded,) = h.fakes.mapper.processed.values()
    assert json.loads(recorded)["contact"] == "77"


async def test_unexpected_event_kinds_are_dead_lettered(h: Harness) -> None:
    env = new_envelope(
        "b24:m1:1", "k", events_pb2.PLATFORM_BITRIX24, operator_read=events_pb2.OperatorRead(member_id="m1")
    )
    outcomes = await h.make().handle([received(env)])
    assert outcomes[0].kind == "dead" and "operator_read" in outcomes[0].reason


async def test_a_portal_rate_limited_beyond_the_wait_does_not_stall_the_batch(h: Harness) -> None:
    h.fakes.mapper.bind("100", "m1", 7, crm_mode=mapper_pb2.CRM_MODE_OPEN_LINE)
    h.bitrix.script["imconnector.send.messages"] = [
        (503, {"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"})
    ] * 5
    h.bitrix.script["batch"] = [(503, {"error": "QUERY_LIMIT_EXCEEDED"})] * 5
    records = [customer(f"c{i}", n) for i in range(4) for n in range(60)]  # several requests' worth
    import time

    started = time.monotonic()
    outcomes = await h.make(bitrix_rate_limit_max_wait_s=0.5).handle(records)
    assert time.monotonic() - started < 3.0
    # Each conversation's first message is retried; its later ones wait behind it (held, uncounted).
    assert [o.kind for o in outcomes] == (["retry"] + ["held"] * 59) * 4
    assert len(h.bitrix.requests) == 1  # one refused request; the rest went to the retry topic untried
    assert outcomes[0].retry_after is not None


async def test_a_portal_that_needs_reauthorisation_is_dead_lettered_at_once(h: Harness) -> None:
    h.fakes.token_keeper.fail["GetAccessToken"] = [grpc.StatusCode.FAILED_PRECONDITION]
    h.fakes.mapper.bind("100", "m1", 7, crm_mode=mapper_pb2.CRM_MODE_OPEN_LINE)
    outcomes = await h.make().handle([customer("a", 1)])
    assert outcomes[0].kind == "dead" and "FAILED_PRECONDITION" in outcomes[0].reason
    h.fakes.token_keeper.fail["GetAccessToken"] = [grpc.StatusCode.UNAVAILABLE]
    outcomes = await h.make().handle([customer("a", 2)])
    assert outcomes[0].kind == "retry"


async def test_every_message_trace_shows_its_delivery_call(h: Harness) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # no library instrumentation: it would leak into other tests
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    records = [customer("a", 1), customer("b", 1), customer("c", 1)]
    assert await h.run(records) == ["ok"] * 3
    for rec in records:
        rec.span.end()
    spans = exporter.get_finished_spans()
    assert isinstance(provider, TracerProvider)
    for rec in records:
        trace_id = rec.span.get_span_context().trace_id
        names = {s.name for s in spans if s.context.trace_id == trace_id}
        assert "bitrix24 imconnector.send.messages" in names, names
        assert "bitrix24 crm.duplicate.findbycomm" in names or "bitrix24 crm" in names, names
    # The one HTTP request of the send runs in the first event's trace; the others link to it.
    (request,) = [
        s
        for s in spans
        if s.name == "bitrix24 imconnector.send.messages"
        and s.attributes.get("zaptrix.bitrix.items") == 3
        and "zaptrix.bitrix.method" not in s.attributes
    ]
    assert request.context.trace_id == records[0].span.get_span_context().trace_id
    per_event = [
        s
        for s in spans
        if s.name == "bitrix24 imconnector.send.messages" and "zaptrix.bitrix.method" in s.attributes
    ]
    assert len(per_event) == 3 and all(
        request.context in [link.context for link in s.links] for s in per_event
    )
    assert not any("access-1" in str(s.attributes) for s in spans)


async def test_a_failed_call_retries_the_first_message_of_each_conversation_and_holds_the_rest(
    h: Harness,
) -> None:
    """Issue 13 / M5: the batch handler's holds and the consumer's agree. A later message of a conversation
    whose earlier one failed transiently in this batch comes back held (behind the pending retry, no attempt
    counted), not as a retry of its own that counts an attempt and could overtake."""
    h.fakes.mapper.bind("100", "m1", 7, crm_mode=mapper_pb2.CRM_MODE_OPEN_LINE)
    h.bitrix.script["imconnector.send.messages"] = [(500, {"error": "INTERNAL_SERVER_ERROR"})] * 2
    records = [customer("a", 1), customer("b", 1), customer("a", 2), customer("b", 2), customer("c", 1)]
    outcomes = await h.make().handle(records)  # one call carries all five; it fails as a whole
    assert [o.kind for o in outcomes] == ["retry", "retry", "held", "held", "retry"]
    assert all(o.retry_after is None for o in outcomes if o.kind == "held")
    assert h.bitrix.sent_messages() == []


async def test_each_requests_deliveries_are_recorded_before_the_next_request(h: Harness) -> None:
    """Issue 13: the crash window is one request, not a poll batch. A delivery is recorded as soon as the
    request that carried it has been answered, before the next request of the batch goes out."""
    h.fakes.mapper.bind("100", "m1", 7, crm_mode=mapper_pb2.CRM_MODE_OPEN_LINE)
    recorded_when_sent: list[int] = []
    answer = h.bitrix.handle

    def spy(request: Any) -> Any:
        recorded_when_sent.append(len(h.fakes.mapper.processed))
        return answer(request)

    h.bitrix.handle = spy  # type: ignore[method-assign]
    records = [customer(f"c{i}", 1) for i in range(6)]
    one_call_per_request = {"bitrix_use_batch": False, "bitrix_max_messages_per_call": 2}
    assert await h.run(records, **one_call_per_request) == ["ok"] * 6
    assert [r.method for r in h.bitrix.requests] == ["imconnector.send.messages"] * 3
    assert recorded_when_sent == [0, 2, 4]
    assert len(h.bitrix.sent_messages()) == 6


async def test_a_send_the_mapper_could_not_record_is_recorded_by_another_dispatcher_not_sent_again(
    h: Harness, kafka_bootstrap: str, kafka_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13 / M4: Bitrix24 answered, then RecordDelivery and the fallback MarkProcessed both failed past
    their in-place attempts (a mapper outage). The event goes to the retry topic; a fresh dispatcher (another
    process or replica) handles the retry: it records the delivery and does not send the message again."""
    monkeypatch.setattr(bookkeeping, "IN_PLACE_BUDGET_S", 0.3, raising=False)
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=kafka_prefix)
    topics = topics_for(Flow.WA_TO_B24, kafka_prefix)
    producer = EventProducer(kafka, client_id="test")
    await producer.start()
    retry_reader = AIOKafkaConsumer(
        topics.retry, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
    )
    await retry_reader.start()
    group = f"g-{uuid.uuid4().hex[:6]}"

    async def consume(until: Callable[[], Awaitable[bool]], retry_base_s: float) -> None:
        consumer = EventConsumer(
            kafka, topics, group, h.make().handle, producer, client_id="d", retry_base_s=retry_base_s
        )
        stopped = asyncio.Event()
        task = asyncio.create_task(consumer.run(stopped))
        try:
            async with asyncio.timeout(60):
                while not await until():
                    assert not task.done(), task
                    await asyncio.sleep(0.1)
        finally:
            stopped.set()
            await task

    try:
        h.fakes.mapper.fail["RecordDelivery"] = [grpc.StatusCode.UNAVAILABLE] * 10_000
        h.fakes.mapper.fail["MarkProcessed"] = [grpc.StatusCode.UNAVAILABLE] * 10_000
        rec = customer("4917", 1)
        await producer.publish(topics.main, [rec.envelope])
        retries: list[Any] = []

        async def retried() -> bool:
            for got in (await retry_reader.getmany(timeout_ms=100)).values():
                retries.extend(got)
            return bool(retries)

        await consume(retried, retry_base_s=4.0)  # due 2-4 s later: the next dispatcher handles it
        assert len(h.bitrix.sent_messages()) == 1 and "wa:wamid.4917.1" not in h.fakes.mapper.processed
        h.fakes.mapper.fail.clear()  # the mapper is back

        async def recorded() -> bool:
            return "wa:wamid.4917.1" in h.fakes.mapper.processed

        await consume(recorded, retry_base_s=4.0)  # a fresh dispatcher instance
    finally:
        await retry_reader.stop()
        await producer.stop()
    assert [m["message"]["id"] for m in h.bitrix.sent_messages()] == ["wamid.4917.1"]  # exactly once
    link = h.fakes.mapper.links["wamid.4917.1"]
    assert link.bitrix_chat_id and link.member_id == "m1"
    assert json.loads(h.fakes.mapper.processed["wa:wamid.4917.1"])["chat"] == link.bitrix_chat_id


async def test_while_the_mapper_records_nothing_the_rest_of_the_batch_is_not_sent(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request's deliveries could not be recorded: the portal's later requests of this batch are not sent
    (they would only add to what waits unrecorded); the retry records the first ones and sends the rest."""
    monkeypatch.setattr(bookkeeping, "IN_PLACE_BUDGET_S", 0.2)
    h.fakes.mapper.bind("100", "m1", 7, crm_mode=mapper_pb2.CRM_MODE_OPEN_LINE)
    h.fakes.mapper.fail["RecordDelivery"] = [grpc.StatusCode.UNAVAILABLE] * 10_000
    h.fakes.mapper.fail["MarkProcessed"] = [grpc.StatusCode.UNAVAILABLE] * 10_000
    records = [customer(f"c{i}", 1) for i in range(6)]
    one_call_per_request = {"bitrix_use_batch": False, "bitrix_max_messages_per_call": 2}
    outcomes = await h.make(**one_call_per_request).handle(records)
    assert [o.kind for o in outcomes] == ["retry"] * 6
    assert len(h.bitrix.requests) == 1 and len(h.bitrix.sent_messages()) == 2
    assert [bool(r.effects) for r in records] == [True, True, False, False, False, False]
    assert "NOT_SENT" in outcomes[2].reason
    h.fakes.mapper.fail.clear()
    assert await h.run(records, **one_call_per_request) == ["ok"] * 6  # the retries (effects kept)
    sent = sorted(m["message"]["id"] for m in h.bitrix.sent_messages())
    assert sent == sorted(f"wamid.c{i}.1" for i in range(6))  # each exactly once
    assert len(h.fakes.mapper.processed) == 6 and len(h.fakes.mapper.links) == 6


async def test_a_notice_posted_but_not_recorded_is_not_posted_again(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bookkeeping, "IN_PLACE_BUDGET_S", 0.2)
    outbound_link(h)
    h.fakes.mapper.fail["MarkProcessed"] = [grpc.StatusCode.UNAVAILABLE] * 10_000
    rec = status("wamid.out1", "failed")
    via = {"bitrix_notice_via": "connector"}
    assert await h.run([rec], **via) == ["retry"]
    assert len(h.bitrix.sent_messages()) == 1 and rec.effects
    h.fakes.mapper.fail.clear()
    assert await h.run([rec], **via) == ["ok"]
    assert len(h.bitrix.sent_messages()) == 1
    assert h.fakes.mapper.processed["wa-status:wamid.out1:failed"] == "notice:connector"
    link = h.fakes.mapper.links["wamid.out1"]
    assert (link.whatsapp_status, link.bitrix_status) == ("failed", "failed")


async def test_a_sent_message_whose_recording_is_dead_lettered_gets_no_not_delivered_notice(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retries exhausted while the mapper stays down: the dead letter of a message Bitrix24 has must not tell
    the operator it could not be shown."""
    monkeypatch.setattr(bookkeeping, "IN_PLACE_BUDGET_S", 0.2)
    h.fakes.mapper.bind("100", "m1", 7, crm_mode=mapper_pb2.CRM_MODE_OPEN_LINE)
    h.fakes.mapper.fail["RecordDelivery"] = [grpc.StatusCode.UNAVAILABLE] * 10_000
    h.fakes.mapper.fail["MarkProcessed"] = [grpc.StatusCode.UNAVAILABLE] * 10_000
    rec = customer("4917", 1)
    (outcome,) = await h.make().handle([rec])
    assert outcome.kind == "retry" and outcome.reason.startswith("sent to Bitrix24, not recorded: ")
    (again,) = await h.make().handle([rec])  # the retry: records only, and fails again
    assert again.reason.startswith("sent to Bitrix24, not recorded: ")
    assert len(h.bitrix.sent_messages()) == 1
    published: list[Any] = []

    class Producer:
        async def publish(self, topic: str, envelopes: list[Any]) -> None:
            published.extend(envelopes)

    hook = CustomerDeadLetters(h.make().deps, Producer(), "t")  # type: ignore[arg-type]
    await hook(rec.envelope, f"retries exhausted after 8 attempts: {again.reason}")
    assert published == []
    await hook(rec.envelope, "retries exhausted after 8 attempts: imconnector.send.messages: NOT_SENT")
    assert len(published) == 1  # a message that never reached Bitrix24 is still told about


def identity_change(old: str, **kw: Any) -> Received:
    change = events_pb2.CustomerIdentityChange(phone_number_id="100", previous_wa_id=old, **kw)
    env = new_envelope(
        f"wa-identity:{old}:{kw.get('user_id', '')}",
        f"100:{old}",
        events_pb2.PLATFORM_WHATSAPP,
        customer_identity_change=change,
    )
    return received(env)


async def test_a_number_change_is_posted_once_as_a_system_line(h: Harness) -> None:
    h.fakes.mapper.add_conversation("100", "491731234567", "Jonas", bitrix_chat_id="1807")
    change = {"change_type": "user_changed_number", "wa_id": "491739999999", "user_id": "US.2"}
    rec = identity_change("491731234567", **change)
    assert await h.run([rec]) == ["ok"]
    (call,) = h.bitrix.calls
    assert call.method == "im.message.add" and call.params["SYSTEM"] == "Y"
    assert call.params["DIALOG_ID"] == "chat1807"
    assert (
        call.params["MESSAGE"] == "📱 The customer changed their number from +491731234567 to +491739999999."
    )
    assert h.fakes.mapper.processed[rec.envelope.event_id] == "notice:im"
    assert await h.run([identity_change("491731234567", **change)]) == ["duplicate"]  # redelivered
    assert len(h.bitrix.calls) == 1 and h.bitrix.sent_messages() == []


async def test_a_new_account_id_before_the_chat_is_known_goes_through_the_connector(h: Harness) -> None:
    conv = h.fakes.mapper.add_conversation("100", "4917", "Anna")  # no bitrix_chat_id yet
    rec = identity_change("4917", change_type="user_changed_user_id", previous_user_id="US.1", user_id="US.2")
    assert await h.run([rec]) == ["ok"]
    (line,) = h.bitrix.sent_messages()
    assert line["chat"]["id"] == conv.external_chat_id
    assert line["message"]["text"] == (
        "📋 Zaptrix: 🪪 The customer's WhatsApp account id changed (same person, same chat)."
    )


async def test_an_identity_change_of_an_unknown_customer_posts_nothing(h: Harness) -> None:
    rec = identity_change("4999", change_type="user_changed_number", wa_id="4998")
    assert await h.run([rec]) == ["ok"]
    assert h.bitrix.calls == []


def history_line(wa_id: str, n: int, *, business: bool = False, text: str = "") -> Received:
    item = events_pb2.HistoryMessage(
        phone_number_id="100",
        wa_id=wa_id,
        wamid=f"wamid.h{wa_id}.{n}",
        from_business=business,
        type="text",
        text=text or f"old {n}",
        status="READ",
        phase=1,
        chunk_order=1,
        progress=100,
    )
    item.sent_at.FromSeconds(1_794_492_180 + n * 60)  # 12.11.2026 14:03 UTC
    env = new_envelope(
        f"wa-history:{item.wamid}", f"100:{wa_id}", events_pb2.PLATFORM_WHATSAPP, history_message=item
    )
    return received(env, n)


async def test_history_becomes_ordered_system_lines_once_and_never_a_customer_message(h: Harness) -> None:
    conv = h.fakes.mapper.add_conversation("100", "4917", "Anna", bitrix_chat_id="1807")
    records = [history_line("4917", n, business=n % 2 == 1) for n in range(4)]
    assert await h.run(records) == ["ok"] * 4
    calls = [c for c in h.bitrix.calls if c.method == "im.message.add"]
    assert [c.params["MESSAGE"] for c in calls] == [
        "🕘 12.11.2026 14:03 UTC — customer: old 0",
        "🕘 12.11.2026 14:04 UTC — business: old 1",
        "🕘 12.11.2026 14:05 UTC — customer: old 2",
        "🕘 12.11.2026 14:06 UTC — business: old 3",
    ]
    assert {(c.params["DIALOG_ID"], c.params["SYSTEM"]) for c in calls} == {("chat1807", "Y")}
    assert h.bitrix.sent_messages() == []  # nothing as the customer's own message
    assert h.fakes.mapper.links == {}  # no message link: not a customer message
    assert not h.fakes.mapper.conversations[conv.id].HasField("last_customer_message_at")  # no 24-h window
    again = [history_line("4917", n, business=n % 2 == 1) for n in range(4)]
    assert await h.run(again) == ["duplicate"] * 4
    assert len([c for c in h.bitrix.calls if c.method == "im.message.add"]) == 4


async def test_history_of_a_customer_never_seen_creates_the_conversation(h: Harness) -> None:
    assert await h.run([history_line("4960", 1)]) == ["ok"]
    conv = h.fakes.mapper.by_customer("100", "4960")
    assert conv is not None  # GetOrCreateConversation
    (line,) = h.bitrix.sent_messages()  # no Bitrix24 chat known yet: the connector, marked as history
    assert line["chat"]["id"] == conv.external_chat_id
    assert line["message"]["text"].startswith("🕘 ") and "— customer: old 1" in line["message"]["text"]
    assert h.fakes.mapper.links == {}


async def test_a_history_line_that_will_be_retried_holds_the_later_ones_of_its_conversation(
    h: Harness,
) -> None:
    h.fakes.mapper.add_conversation("100", "4917", "Anna", bitrix_chat_id="1807")
    h.fakes.mapper.fail["CheckProcessed"] = [grpc.StatusCode.UNAVAILABLE]
    assert await h.run([history_line("4917", n) for n in range(3)]) == ["retry", "held", "held"]
    assert h.bitrix.calls == []
