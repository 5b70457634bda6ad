"""Statuses of operator messages at Bitrix24: many in few calls, each message once, each portal its own."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from typing import Any

from bitrix_ingress.dispatcher import packing as dl
from bitrix_ingress.formparse import as_list
from test_batch_delivery import Harness, customer, h, status  # noqa: F401 (h: the fixture)
from zaptrix.kafka import EventConsumer, EventProducer, Flow, Outcome, Received, topics_for
from zaptrix.settings import KafkaSettings
from zaptrix.v1 import events_pb2, mapper_pb2
from zaptrix_testing.fakes import Portal
from zaptrix_testing.waiting import eventually

DELIVERY = "imconnector.send.status.delivery"
READING = "imconnector.send.status.reading"


def sent_reply(harness: Harness, n: int, *, pnid: str = "100", member_id: str = "m1") -> str:
    """An operator reply to customer n that the meta dispatcher sent and linked; its wamid."""
    conv = harness.fakes.mapper.add_conversation(pnid, f"4917{n:04d}", f"Kunde {n}")
    wamid = f"wamid.reply{pnid}x{n}"
    harness.fakes.mapper.links[wamid] = mapper_pb2.MessageLink(
        conversation_id=conv.id,
        direction=mapper_pb2.DIRECTION_OUTBOUND,
        wamid=wamid,
        member_id=member_id,
        bitrix_message_id=str(90_000 + n),
        bitrix_chat_id=str(1_000 + n),
    )
    return wamid


def reported(harness: Harness, method: str = DELIVERY, token: str | None = None) -> list[str]:
    """Every wamid in the MESSAGES of successful-looking status calls, as often as it was carried."""
    return [
        wamid
        for call in harness.bitrix.calls
        if call.method == method and (token is None or call.token == token)
        for item in as_list(call.params["MESSAGES"])
        for wamid in as_list(item["message"]["id"])
    ]


async def test_many_statuses_go_in_few_calls_and_each_message_once(h: Harness) -> None:  # noqa: F811
    wamids = [sent_reply(h, n) for n in range(40)]
    # What 40 replies bring back within one poll: sent, delivered and read of each, interleaved.
    batch = [
        status(w, s, wa_id=f"4917{n:04d}")
        for s in ("sent", "delivered", "read")
        for n, w in enumerate(wamids)
    ]
    assert await h.run(batch) == ["ok"] * 120
    assert sorted(reported(h)) == sorted(wamids)  # every message's delivery, none twice
    assert sorted(reported(h, READING)) == sorted(wamids)  # and its read, as a read, once
    assert [r.method for r in h.bitrix.requests] == ["batch"]  # one HTTP request for all of them
    assert [c.method for c in h.bitrix.calls] == [DELIVERY, READING]  # deliveries first
    for w in wamids:
        link = h.fakes.mapper.links[w]
        assert (link.whatsapp_status, link.bitrix_status) == ("read", "read")
    # Delivered again later (Meta retried the webhook): already reported, no call.
    assert await h.run([status(wamids[0], "delivered", wa_id="49170000")]) == ["ok"]
    assert len(h.bitrix.requests) == 1


async def test_only_a_status_that_calls_bitrix_pays_for_dedupe_and_conversation(h: Harness) -> None:  # noqa: F811
    wamids = [sent_reply(h, n) for n in range(10)]
    first = [status(w, s, wa_id=f"4917{n:04d}") for s in ("sent", "delivered") for n, w in enumerate(wamids)]
    assert await h.run(first) == ["ok"] * 20
    m = h.fakes.mapper
    # One look-up of the links and one of the dedupe records for the whole poll batch, none per status.
    assert (m.count("FindMessageLinks"), m.count("CheckProcessedMany")) == (1, 1)
    assert m.count("FindMessageLink") == 0 and m.count("CheckProcessed") == 0
    # The sent statuses' link updates in one UpdateMessageStatuses; the deliveries' (one request to
    # Bitrix24) in one more after their report, which also records them processed: no call per status.
    assert (m.count("UpdateMessageStatuses"), m.count("UpdateMessageStatus"), m.count("MarkProcessed")) == (
        2,
        0,
        0,
    )
    assert {e for e in m.processed if e.startswith("wa-status:")} == {
        f"wa-status:{w}:delivered" for w in wamids
    }
    m.forget_calls()
    # Meta sends the deliveries again: already reported, only the links (idempotent), no dedupe record.
    again = [status(w, "delivered", wa_id=f"4917{n:04d}") for n, w in enumerate(wamids)]
    for rec in again:
        rec.envelope.event_id += ":again"
    assert await h.run(again) == ["ok"] * 10
    assert m.count("MarkProcessed") == 0 and m.count("FindConversation") == 0
    assert (m.count("UpdateMessageStatuses"), m.count("UpdateMessageStatus")) == (1, 0)
    assert [r.method for r in h.bitrix.requests] == [DELIVERY]  # no call for them
    reads = [status(w, "read", wa_id=f"4917{n:04d}") for n, w in enumerate(wamids)]
    assert await h.run(reads) == ["ok"] * 10
    assert [r.method for r in h.bitrix.requests] == [DELIVERY, READING]  # the reads, as reads, in one
    assert all(h.fakes.mapper.links[w].whatsapp_status == "read" for w in wamids)


async def test_delivered_and_read_in_one_batch_report_the_message_once(h: Harness) -> None:  # noqa: F811
    w = sent_reply(h, 1)
    outcomes = await h.run([status(w, "delivered", wa_id="49170001"), status(w, "read", wa_id="49170001")])
    assert outcomes == ["ok", "ok"]
    assert reported(h) == [w] and reported(h, READING) == [w]
    assert h.fakes.mapper.processed.keys() >= {f"wa-status:{w}:delivered", f"wa-status:{w}:read"}


async def test_statuses_of_two_portals_go_to_their_own_portal(h: Harness) -> None:  # noqa: F811
    h.fakes.token_keeper.add(
        Portal("m2", "apptok2", access_token="access-2", client_endpoint="https://two.example.com/rest/")
    )
    h.fakes.mapper.bind("200", "m2", 3)
    h.bitrix.valid_tokens.add("access-2")
    ones = [sent_reply(h, n) for n in range(3)]
    twos = [sent_reply(h, n, pnid="200", member_id="m2") for n in range(10, 13)]
    batch = [status(w, "delivered", wa_id=f"4917{n:04d}") for n, w in enumerate(ones)]
    for n, w in zip(range(10, 13), twos, strict=True):
        record = status(w, "delivered", wa_id=f"4917{n:04d}")
        record.envelope.whatsapp_status.phone_number_id = "200"
        batch.append(record)
    assert await h.run(batch) == ["ok"] * 6
    assert sorted(reported(h, token="access-1")) == sorted(ones)
    assert sorted(reported(h, token="access-2")) == sorted(twos)


def test_merge_statuses_keeps_one_element_per_message_in_order() -> None:
    def item(owner: str, chat: str, message: str) -> dl.Item:
        payload = dl.build_status_item(
            bitrix_chat_id=chat, bitrix_message_id=message, wamids=[owner], external_chat_id="x", at=1
        )
        return dl.Item(owner, payload)

    merged = dl.merge_statuses([item("a", "1", "10"), item("b", "2", "20"), item("c", "1", "10")])
    assert [i.owner for i in merged] == ["a", "b"]
    assert merged[0].owners == ["a", "c"] and merged[1].owners == ["b"]
    # The same message id in another chat is another message.
    assert len(dl.merge_statuses([item("a", "1", "10"), item("b", "2", "10")])) == 2


async def test_a_status_already_processed_in_the_batch_check_is_a_duplicate(h: Harness) -> None:  # noqa: F811
    w = sent_reply(h, 1)
    h.fakes.mapper.processed[f"wa-status:{w}:delivered"] = dl.STATUS_DELIVERY
    assert await h.run([status(w, "delivered", wa_id="49170001")]) == ["duplicate"]
    assert reported(h) == [] and h.fakes.mapper.count("CheckProcessed") == 0


async def test_statuses_ask_alone_when_the_batched_lookups_fail(h: Harness) -> None:  # noqa: F811
    import grpc

    wamids = [sent_reply(h, n) for n in range(3)]
    h.fakes.mapper.fail["FindMessageLinks"].append(grpc.StatusCode.UNAVAILABLE)
    h.fakes.mapper.fail["CheckProcessedMany"].append(grpc.StatusCode.UNAVAILABLE)
    batch = [status(w, "delivered", wa_id=f"4917{n:04d}") for n, w in enumerate(wamids)]
    assert await h.run(batch) == ["ok"] * 3
    assert sorted(reported(h)) == sorted(wamids)
    assert h.fakes.mapper.count("FindMessageLink") == 3 and h.fakes.mapper.count("CheckProcessed") == 3


async def test_a_status_takes_its_conversation_from_the_known_ones(h: Harness) -> None:  # noqa: F811
    wamid = sent_reply(h, 1)
    dispatcher = h.make()
    # The customer's message makes its conversation known; the reply's status then needs no look-up.
    assert [o.kind for o in await dispatcher.handle([customer("49170001", 1)])] == ["ok"]
    h.fakes.mapper.forget_calls()
    outcomes = await dispatcher.handle([status(wamid, "delivered", wa_id="49170001")])
    assert [o.kind for o in outcomes] == ["ok"]
    assert h.fakes.mapper.count("FindConversation") == 0
    conv = next(c for c in h.fakes.mapper.conversations.values() if c.wa_id == "49170001")
    call = next(c for c in h.bitrix.calls if c.method == DELIVERY)
    assert as_list(call.params["MESSAGES"])[0]["chat"]["id"] == conv.external_chat_id


async def test_a_known_conversation_is_not_used_for_another_conversation_s_link(h: Harness) -> None:  # noqa: F811
    """The cache holds the channel's customer's conversation of portal m1; a link naming another
    conversation (or another portal) is answered from the mapper, never from that entry."""
    dispatcher = h.make()
    assert [o.kind for o in await dispatcher.handle([customer("49170001", 1)])] == ["ok"]
    known = next(c for c in h.fakes.mapper.conversations.values() if c.wa_id == "49170001")
    other = h.fakes.mapper.add_conversation("100", "49179999", "Other")
    h.fakes.mapper.links["wamid.other"] = mapper_pb2.MessageLink(
        conversation_id=other.id,
        direction=mapper_pb2.DIRECTION_OUTBOUND,
        wamid="wamid.other",
        member_id="m1",
        bitrix_message_id="777",
        bitrix_chat_id="55",
    )
    h.fakes.mapper.forget_calls()
    # The status claims the known customer's wa_id, but its link is of the other conversation.
    outcomes = await dispatcher.handle([status("wamid.other", "delivered", wa_id="49170001")])
    assert [o.kind for o in outcomes] == ["ok"]
    assert h.fakes.mapper.count("FindConversation") == 1
    call = next(c for c in h.bitrix.calls if c.method == DELIVERY)
    chat = as_list(call.params["MESSAGES"])[0]["chat"]["id"]
    assert chat == other.external_chat_id != known.external_chat_id


async def test_a_failed_status_update_retries_those_statuses_only(h: Harness) -> None:  # noqa: F811
    import grpc

    wamids = [sent_reply(h, n) for n in range(2)]
    h.fakes.mapper.fail["UpdateMessageStatuses"].append(grpc.StatusCode.UNAVAILABLE)
    batch = [status(wamids[0], "sent", wa_id="49170000"), status(wamids[1], "delivered", wa_id="49170001")]
    assert await h.run(batch) == ["retry", "ok"]  # the link update was not made: the sent status again
    assert reported(h) == [wamids[1]]
    assert h.fakes.mapper.links[wamids[0]].whatsapp_status == ""
    assert await h.run([batch[0]]) == ["ok"]
    assert h.fakes.mapper.links[wamids[0]].whatsapp_status == "sent"


async def test_pricing_rides_on_every_link_update_of_a_status(h: Harness, monkeypatch: Any) -> None:  # noqa: F811
    """The cost ledger's input (mapper counts it once per wamid): the status reported to Bitrix24, the one
    that only updates its link, and the retry that only records what an earlier attempt sent all carry the
    status's pricing and time."""
    import grpc
    from bitrix_ingress.dispatcher import bookkeeping
    from bitrix_ingress.dispatcher.sent_effects import SENT

    pricing = events_pb2.Pricing(billable=True, pricing_model="PMP", category="marketing", type="regular")
    reported_one, link_only = sent_reply(h, 1), sent_reply(h, 2)
    h.fakes.mapper.links[link_only].bitrix_status = "delivered"  # its delivery was reported already

    def updates() -> list[mapper_pb2.UpdateMessageStatusRequest]:
        return [u for m, r in h.fakes.mapper.requests if m == "UpdateMessageStatuses" for u in r.updates]

    batch = [
        status(reported_one, "delivered", wa_id="49170001", pricing=pricing),
        status(link_only, "delivered", wa_id="49170002", pricing=pricing),
    ]
    assert await h.run(batch) == ["ok", "ok"]
    sent = {u.wamid: u for u in updates()}
    assert sent[reported_one].pricing == pricing and sent[reported_one].processed.event_id
    assert sent[link_only].pricing == pricing and sent[link_only].at.seconds == 1_700_000_100

    # The mapper fails while recording a reported status: the retry only records it, pricing included.
    third = sent_reply(h, 3)
    monkeypatch.setattr(bookkeeping, "IN_PLACE_BUDGET_S", 0.2)
    h.fakes.mapper.fail["UpdateMessageStatuses"] = [grpc.StatusCode.UNAVAILABLE] * 10_000
    rec = status(third, "delivered", wa_id="49170003", pricing=pricing)
    (outcome,) = await h.make().handle([rec])
    assert outcome.kind == "retry" and SENT in rec.effects
    h.fakes.mapper.fail.clear()
    h.fakes.mapper.forget_calls()
    (again,) = await h.make().handle([rec])
    assert again.kind == "ok"
    (late,) = [u for u in updates() if u.wamid == third]
    assert late.pricing == pricing and late.whatsapp_status == "delivered"
    assert reported(h).count(third) == 1  # reported to Bitrix24 once


# The portal's pacer at 1 request per PACED_S, burst 1: after one request the next waits PACED_S.
PACED_S = 4.0
PACED = {"bitrix_rate_per_s": 1 / PACED_S, "bitrix_burst": 1}
QUICK = {"bitrix_rate_per_s": 2.0, "bitrix_burst": 1}  # the documented 2 req/s, after a spent burst


def carried(harness: Harness, request: int) -> list[str]:
    """The wamids (of sent_reply) that the n-th HTTP request carried, as a single call or in a batch."""
    return sorted(set(re.findall(r"wamid\.reply\d+x\d+", str(harness.bitrix.requests[request].params))))


async def test_poll_batches_waiting_for_the_portal_share_its_next_request(h: Harness) -> None:  # noqa: F811
    """Issue 14: while the portal's pacer waits, the statuses of every poll batch in flight accumulate and
    go out in ONE request at its slot, not one request per poll batch."""
    dispatcher = h.make(**QUICK)
    wamids = [sent_reply(h, n) for n in range(9)]

    def poll(ns: range) -> list[Received]:
        return [status(wamids[n], "delivered", wa_id=f"4917{n:04d}") for n in ns]

    assert {o.kind for o in await dispatcher.handle(poll(range(3)))} == {"ok"}  # the burst's one request
    later = await asyncio.gather(dispatcher.handle(poll(range(3, 6))), dispatcher.handle(poll(range(6, 9))))
    assert {o.kind for outcomes in later for o in outcomes} == {"ok"}
    assert len(h.bitrix.requests) == 2  # was 3: each poll batch its own request, each waiting its slot
    assert sorted(reported(h)) == sorted(wamids)  # each once
    assert all(h.fakes.mapper.links[w].bitrix_status == "delivered" for w in wamids)


async def test_a_batch_gone_while_waiting_for_the_portal_sends_nothing(h: Harness) -> None:  # noqa: F811
    """A poll batch cancelled (its consumer stopping) before the portal's slot: its works leave the queue,
    nothing of it reaches Bitrix24 unrecorded, the others' request goes as usual."""
    dispatcher = h.make(**QUICK)
    wamids = [sent_reply(h, n) for n in range(5)]

    def poll(ns: range) -> list[Received]:
        return [status(wamids[n], "delivered", wa_id=f"4917{n:04d}") for n in ns]

    assert {o.kind for o in await dispatcher.handle(poll(range(1)))} == {"ok"}  # the burst's one request
    gone = asyncio.create_task(dispatcher.handle(poll(range(1, 3))))
    await eventually(lambda: dispatcher.calls._pending, 5, "the batch waiting for the portal's slot")
    gone.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await gone
    assert {o.kind for o in await dispatcher.handle(poll(range(3, 5)))} == {"ok"}
    assert len(h.bitrix.requests) == 2 and carried(h, 1) == sorted(wamids[3:5])
    assert sorted(reported(h)) == sorted([wamids[0], *wamids[3:5]])
    assert all(not h.fakes.mapper.links[w].bitrix_status for w in wamids[1:3])  # redelivered, not lost


async def test_statuses_arriving_over_several_polls_ride_in_the_portal_s_next_request(
    h: Harness,  # noqa: F811
    kafka_bootstrap: str,
    kafka_prefix: str,
) -> None:
    """Issue 14, through the real consumer and Kafka: statuses arrive in three waves; the first goes out
    at once, the next two come in separate polls while the portal's pacer waits, and its next request
    carries both, each status exactly once, the offsets committed."""
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=kafka_prefix)
    topics = topics_for(Flow.WA_TO_B24, kafka_prefix)
    producer = EventProducer(kafka, client_id="test")
    await producer.start()
    wamids = [sent_reply(h, n) for n in range(9)]
    waves = [
        [status(wamids[n], "delivered", wa_id=f"4917{n:04d}") for n in range(k, k + 3)] for k in (0, 3, 6)
    ]
    dispatcher = h.make(**PACED)
    polls: list[set[str]] = []

    async def handle(batch: list[Received]) -> list[Outcome]:
        polls.append({rec.envelope.whatsapp_status.wamid for rec in batch})
        return await dispatcher.handle(batch)

    group = f"g-{uuid.uuid4().hex[:6]}"
    consumer = EventConsumer(kafka, topics, group, handle, producer, client_id="d")
    stopped = asyncio.Event()
    task = asyncio.create_task(consumer.run(stopped))

    def polled(wave: list[Received]) -> bool:
        return any({rec.envelope.whatsapp_status.wamid for rec in wave} <= p for p in polls)

    try:
        await producer.publish(topics.main, [rec.envelope for rec in waves[0]])
        await eventually(lambda: len(h.bitrix.requests) == 1, 30, "the first wave's request")
        await producer.publish(topics.main, [rec.envelope for rec in waves[1]])
        await eventually(lambda: polled(waves[1]), PACED_S / 2, "the second wave polled")
        await producer.publish(topics.main, [rec.envelope for rec in waves[2]])
        await eventually(lambda: polled(waves[2]), PACED_S / 2, "the third wave polled")
        assert len(h.bitrix.requests) == 1  # both waves polled while the portal's pacer waited
        # One request per poll batch would report the third wave only a slot later, in a third request.
        await eventually(lambda: sorted(reported(h)) == sorted(wamids), 30, "every status reported")
    finally:
        stopped.set()
        await task
        await producer.stop()
    # The premise: the two waves came in separate polls (no poll batch held both).
    assert not any({r.envelope.whatsapp_status.wamid for r in waves[1] + waves[2]} <= p for p in polls)
    assert len(h.bitrix.requests) == 2 and carried(h, 1) == sorted(wamids[3:])
    assert sorted(reported(h)) == sorted(wamids)  # each exactly once
    committed = await _committed(kafka_bootstrap, group, topics.main)
    assert committed == 9  # every offset committed once its outcome was recorded


async def _committed(bootstrap: str, group: str, topic: str) -> int:
    """The group's committed offsets on the topic, summed over its partitions."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic)
