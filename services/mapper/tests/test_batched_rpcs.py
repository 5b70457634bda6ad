"""CheckProcessedMany and RecordDeliveries answer as one CheckProcessed / RecordDelivery per item would."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from mapper.repository import Repository
from mapper_support import Mapper, expect_code
from test_record_delivery import delivery
from zaptrix.v1 import mapper_pb2 as pb

OK = grpc.StatusCode.OK


async def _conversations(mapper: Mapper, pnid: str, member_id: str) -> tuple[str, str]:
    await mapper.bind(pnid, member_id)
    first = await mapper.conversation(pnid, "4917001")
    second = await mapper.conversation(pnid, "4917002")
    return str(first.id), str(second.id)


def _items(prefix: str, c1: str, c2: str) -> list[pb.RecordDeliveryRequest]:
    """Two messages of c1, one of c2, then what must fail: a wamid of c1 claimed for c2, a conversation
    that does not exist, an empty event id, and a repeat of c2's message (already processed)."""
    return [
        delivery(c1, wamid=f"{prefix}.1", event_id=f"{prefix}-e1", sent_at=1_700_000_001),
        delivery(c1, wamid=f"{prefix}.2", event_id=f"{prefix}-e2", sent_at=1_700_000_002),
        delivery(c2, wamid=f"{prefix}.3", event_id=f"{prefix}-e3", sent_at=1_700_000_003),
        delivery(c2, wamid=f"{prefix}.1", event_id=f"{prefix}-e4"),
        delivery("7d0f4f56-0000-4000-8000-000000000000", wamid=f"{prefix}.5", event_id=f"{prefix}-e5"),
        delivery(c1, wamid=f"{prefix}.6", event_id=""),
        delivery(c2, wamid=f"{prefix}.3", event_id=f"{prefix}-e3", sent_at=1_700_000_003),
    ]


def _shape(code: grpc.StatusCode, reply: pb.RecordDeliveryResponse | None, ids: dict[str, str]) -> Any:
    """What must be equal between the two ways (ids and timestamps of the two runs differ)."""
    if reply is None:
        return code
    link, conv = reply.link, reply.conversation
    return (
        code,
        reply.already_processed,
        (link.wamid.split(".", 1)[1], ids[link.conversation_id], link.bitrix_chat_id, link.bitrix_status),
        (ids[conv.id], conv.bitrix_chat_id, conv.contact_name, conv.last_customer_message_at.seconds),
    )


async def _singles(mapper: Mapper, items: list[pb.RecordDeliveryRequest]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        try:
            out.append((OK, await mapper.stub.RecordDelivery(item)))
        except grpc.aio.AioRpcError as exc:
            out.append((exc.code(), None))
    return out


async def test_record_deliveries_answers_each_item_as_record_delivery_would(mapper: Mapper) -> None:
    a1, a2 = await _conversations(mapper, "1001", "portal-a")
    b1, b2 = await _conversations(mapper, "1002", "portal-a")
    singles = await _singles(mapper, _items("single", a1, a2))
    batched = await mapper.stub.RecordDeliveries(
        pb.RecordDeliveriesRequest(deliveries=_items("many", b1, b2))
    )
    many = [
        (grpc.StatusCode.OK, r.response)
        if not r.error_code
        else (next(c for c in grpc.StatusCode if c.value[0] == r.error_code), None)
        for r in batched.results
    ]
    ids = {a1: "c1", a2: "c2", b1: "c1", b2: "c2"}
    assert [_shape(c, r, ids) for c, r in many] == [_shape(c, r, ids) for c, r in singles]
    assert [c for c, _ in many] == [OK, OK, OK, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.NOT_FOUND,
                                    grpc.StatusCode.INVALID_ARGUMENT, OK]  # fmt: skip
    # The same rows as the single calls wrote: links, processed records, conversations.
    for prefix in ("single", "many"):
        links = await mapper.sql(
            "SELECT wamid, conversation_id::text AS c FROM mapper.message_link WHERE wamid LIKE $1 ORDER BY wamid",
            f"{prefix}.%",
        )
        assert [(r["wamid"].split(".", 1)[1], ids[r["c"]]) for r in links] == [
            ("1", "c1"),
            ("2", "c1"),
            ("3", "c2"),
        ]
        done = await mapper.sql(
            "SELECT event_id FROM mapper.processed_event WHERE event_id LIKE $1 ORDER BY 1", f"{prefix}-%"
        )
        assert [r["event_id"].split("-", 1)[1] for r in done] == ["e1", "e2", "e3"]


async def test_record_deliveries_all_good_is_one_transaction_with_the_same_end_state(mapper: Mapper) -> None:
    a1, a2 = await _conversations(mapper, "1001", "portal-a")
    b1, b2 = await _conversations(mapper, "1002", "portal-a")
    good = [0, 1, 2, 6]  # the items that record
    singles = await _singles(mapper, [_items("single", a1, a2)[i] for i in good])
    items = [_items("many", b1, b2)[i] for i in good]
    batched = await mapper.stub.RecordDeliveries(pb.RecordDeliveriesRequest(deliveries=items))
    assert [r.error_code for r in batched.results] == [0, 0, 0, 0]
    assert (
        [r.response.already_processed for r in batched.results]
        == [s.already_processed for _, s in singles]
        == [False, False, False, True]
    )
    ids = {a1: "c1", a2: "c2", b1: "c1", b2: "c2"}
    assert [_shape(OK, r.response, ids)[2] for r in batched.results] == [
        _shape(OK, s, ids)[2] for _, s in singles
    ]
    # A conversation answers as it is after the whole list: the later message's time for both of c1's.
    assert [r.response.conversation.last_customer_message_at.seconds for r in batched.results[:2]] == [
        1_700_000_002
    ] * 2
    for single, batch in ((a1, b1), (a2, b2)):
        s = await mapper.stub.FindConversation(pb.FindConversationRequest(id=single))
        b = await mapper.stub.FindConversation(pb.FindConversationRequest(id=batch))
        assert (s.bitrix_chat_id, s.contact_name, s.last_message_at, s.last_customer_message_at) == (
            b.bitrix_chat_id,
            b.contact_name,
            b.last_message_at,
            b.last_customer_message_at,
        )


async def test_record_deliveries_of_another_portal_s_conversation_records_nothing(mapper: Mapper) -> None:
    """A link naming portal B for a conversation of portal A is refused as LinkMessage refuses it."""
    a1, _ = await _conversations(mapper, "1001", "portal-a")
    wrong = delivery(a1, wamid="x.1", event_id="x-e1", member_id="portal-b")
    batched = await mapper.stub.RecordDeliveries(pb.RecordDeliveriesRequest(deliveries=[wrong]))
    assert batched.results[0].error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert not await mapper.sql("SELECT 1 FROM mapper.message_link WHERE wamid = 'x.1'")
    assert not await mapper.sql("SELECT 1 FROM mapper.processed_event WHERE event_id = 'x-e1'")


async def test_check_processed_many_answers_as_check_processed(mapper: Mapper) -> None:
    await mapper.stub.MarkProcessed(pb.MarkProcessedRequest(event_id="e1", result="r1"))
    await mapper.stub.MarkProcessed(pb.MarkProcessedRequest(event_id="e3", result=""))
    ids = ["e1", "e2", "e3", "e1", "unknown"]
    many = await mapper.stub.CheckProcessedMany(pb.CheckProcessedManyRequest(event_ids=ids))
    singles = [await mapper.stub.CheckProcessed(pb.CheckProcessedRequest(event_id=e)) for e in ids]
    assert list(many.results) == singles
    assert [(r.processed, r.result) for r in many.results] == [
        (True, "r1"),
        (False, ""),
        (True, ""),
        (True, "r1"),
        (False, ""),
    ]
    assert not (await mapper.stub.CheckProcessedMany(pb.CheckProcessedManyRequest())).results


async def test_batched_rpcs_refuse_what_the_single_ones_refuse_and_oversized_lists(mapper: Mapper) -> None:
    bad = pb.CheckProcessedManyRequest(event_ids=["e1", " "])
    await expect_code(mapper.stub.CheckProcessedMany(bad), grpc.StatusCode.INVALID_ARGUMENT)
    huge = pb.CheckProcessedManyRequest(event_ids=[f"e{i}" for i in range(1001)])
    await expect_code(mapper.stub.CheckProcessedMany(huge), grpc.StatusCode.INVALID_ARGUMENT)
    many = pb.RecordDeliveriesRequest(deliveries=[pb.RecordDeliveryRequest()] * 1001)
    await expect_code(mapper.stub.RecordDeliveries(many), grpc.StatusCode.INVALID_ARGUMENT)


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the one-statement path's successes."""
    used: list[int] = []
    real = Repository._record_new_deliveries

    async def spy(self: Repository, *args: Any) -> Any:
        done = await real(self, *args)
        used.append(len(done))
        return done

    monkeypatch.setattr(Repository, "_record_new_deliveries", spy)
    return used


async def test_record_deliveries_all_new_is_one_statement_with_the_single_answers(
    mapper: Mapper, monkeypatch: pytest.MonkeyPatch
) -> None:
    a1, a2 = await _conversations(mapper, "1001", "portal-a")
    b1, b2 = await _conversations(mapper, "1002", "portal-a")
    used = _spy(monkeypatch)
    singles = await _singles(mapper, _items("single", a1, a2)[:3])
    items = _items("many", b1, b2)[:3]
    batched = await mapper.stub.RecordDeliveries(pb.RecordDeliveriesRequest(deliveries=items))
    assert used == [3]
    ids = {a1: "c1", a2: "c2", b1: "c1", b2: "c2"}
    assert [r.error_code for r in batched.results] == [0, 0, 0]
    assert [_shape(OK, r.response, ids)[:3] for r in batched.results] == [
        _shape(c, r, ids)[:3] for c, r in singles
    ]
    for r in batched.results:  # what is read back is what the one statement answered
        found = await mapper.stub.FindMessageLink(pb.FindMessageLinkRequest(wamid=r.response.link.wamid))
        assert found == r.response.link
        conv = await mapper.stub.FindConversation(pb.FindConversationRequest(id=r.response.conversation.id))
        assert conv == r.response.conversation
    check = await mapper.stub.CheckProcessedMany(
        pb.CheckProcessedManyRequest(event_ids=[i.processed.event_id for i in items])
    )
    assert all(c.processed for c in check.results)


async def test_a_retried_list_is_recorded_step_by_step_with_the_single_answers(
    mapper: Mapper, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One wamid of the list is already linked (an earlier attempt recorded it): the one statement is
    undone as a whole and the list is recorded step by step, answering as RecordDelivery would."""
    a1, a2 = await _conversations(mapper, "1001", "portal-a")
    b1, b2 = await _conversations(mapper, "1002", "portal-a")
    used = _spy(monkeypatch)
    first, second = _items("single", a1, a2)[:2]
    singles = await _singles(mapper, [first, first, second])
    first, second = _items("many", b1, b2)[:2]
    await mapper.stub.RecordDeliveries(pb.RecordDeliveriesRequest(deliveries=[first]))
    again = await mapper.stub.RecordDeliveries(pb.RecordDeliveriesRequest(deliveries=[first, second]))
    assert used == [1]  # the second list did not go through the one statement
    ids = {a1: "c1", a2: "c2", b1: "c1", b2: "c2"}
    assert [_shape(OK, r.response, ids)[:3] for r in again.results] == [
        _shape(c, r, ids)[:3] for c, r in singles[1:]
    ]
    assert [r.response.already_processed for r in again.results] == [True, False]


async def test_find_message_links_answers_as_find_message_link(mapper: Mapper) -> None:
    c1, c2 = await _conversations(mapper, "1001", "portal-a")
    for wamid, conv in (("fml.1", c1), ("fml.2", c2)):
        await mapper.stub.LinkMessage(
            pb.LinkMessageRequest(
                link=pb.MessageLink(
                    wamid=wamid,
                    conversation_id=conv,
                    direction=pb.DIRECTION_OUTBOUND,
                    bitrix_message_id=f"9{wamid[-1]}",
                    bitrix_chat_id="55",
                )
            )
        )
    await mapper.stub.UpdateMessageStatus(
        pb.UpdateMessageStatusRequest(wamid="fml.2", bitrix_status="delivered")
    )
    asked = ["fml.2", "fml.unknown", "fml.1", "fml.2"]
    many = await mapper.stub.FindMessageLinks(pb.FindMessageLinksRequest(wamids=asked))
    singles = []
    for wamid in asked:
        try:
            singles.append(await mapper.stub.FindMessageLink(pb.FindMessageLinkRequest(wamid=wamid)))
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
    assert list(many.links) == singles  # the found ones, in the order asked (a repeat answered again)
    assert [(x.wamid, x.member_id, x.bitrix_status) for x in many.links] == [
        ("fml.2", "portal-a", "delivered"),
        ("fml.1", "portal-a", ""),
        ("fml.2", "portal-a", "delivered"),
    ]
    assert not (await mapper.stub.FindMessageLinks(pb.FindMessageLinksRequest())).links
    bad = pb.FindMessageLinksRequest(wamids=["fml.1", ""])
    await expect_code(mapper.stub.FindMessageLinks(bad), grpc.StatusCode.INVALID_ARGUMENT)
    huge = pb.FindMessageLinksRequest(wamids=[f"w{i}" for i in range(1001)])
    await expect_code(mapper.stub.FindMessageLinks(huge), grpc.StatusCode.INVALID_ARGUMENT)


async def test_update_message_statuses_answers_as_the_single_updates(mapper: Mapper) -> None:
    c1, _ = await _conversations(mapper, "1001", "portal-a")
    for prefix in ("one", "many"):
        for n in (1, 2):
            await mapper.stub.LinkMessage(
                pb.LinkMessageRequest(
                    link=pb.MessageLink(
                        wamid=f"{prefix}.{n}", conversation_id=c1, direction=pb.DIRECTION_OUTBOUND
                    )
                )
            )

    def updates(prefix: str) -> list[pb.UpdateMessageStatusRequest]:
        u = pb.UpdateMessageStatusRequest
        return [  # out of order, as Meta sends them; a status never moves back
            u(wamid=f"{prefix}.1", whatsapp_status="read"),
            u(wamid=f"{prefix}.1", whatsapp_status="sent"),
            u(wamid=f"{prefix}.2", whatsapp_status="delivered", bitrix_status="read"),
            u(wamid=f"{prefix}.2", bitrix_status="delivered"),
            u(wamid=f"{prefix}.unknown", whatsapp_status="sent"),
            u(wamid=f"{prefix}.1"),
        ]

    for single in updates("one"):
        try:
            await mapper.stub.UpdateMessageStatus(single)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
    many = await mapper.stub.UpdateMessageStatuses(pb.UpdateMessageStatusesRequest(updates=updates("many")))
    state = [(x.wamid, x.whatsapp_status, x.bitrix_status) for x in many.links]
    assert state == [
        ("many.1", "read", ""),
        ("many.1", "read", ""),
        ("many.2", "delivered", "read"),
        ("many.2", "delivered", "read"),
        ("many.1", "read", ""),
    ]
    for n in (1, 2):
        one = await mapper.stub.FindMessageLink(pb.FindMessageLinkRequest(wamid=f"one.{n}"))
        got = await mapper.stub.FindMessageLink(pb.FindMessageLinkRequest(wamid=f"many.{n}"))
        assert (one.whatsapp_status, one.bitrix_status) == (got.whatsapp_status, got.bitrix_status)
    bad = pb.UpdateMessageStatusesRequest(
        updates=[pb.UpdateMessageStatusRequest(wamid="many.1", whatsapp_status="bogus")]
    )
    await expect_code(mapper.stub.UpdateMessageStatuses(bad), grpc.StatusCode.INVALID_ARGUMENT)
    huge = pb.UpdateMessageStatusesRequest(updates=[pb.UpdateMessageStatusRequest(wamid="w")] * 1001)
    await expect_code(mapper.stub.UpdateMessageStatuses(huge), grpc.StatusCode.INVALID_ARGUMENT)


async def test_update_message_statuses_marks_processed_in_the_same_transaction(mapper: Mapper) -> None:
    c1, _ = await _conversations(mapper, "1002", "portal-a")
    link = pb.MessageLink(wamid="marked.1", conversation_id=c1, direction=pb.DIRECTION_OUTBOUND)
    await mapper.stub.LinkMessage(pb.LinkMessageRequest(link=link))
    u, mark = pb.UpdateMessageStatusRequest, pb.MarkProcessedRequest
    ids = ["ev.marked.delivered", "ev.marked.read", "ev.marked.unknown"]
    request = pb.UpdateMessageStatusesRequest(
        updates=[
            u(wamid="marked.1", bitrix_status="delivered", processed=mark(event_id=ids[0], result="first")),
            u(wamid="marked.1", bitrix_status="read", processed=mark(event_id=ids[1], result="reading")),
            u(wamid="marked.1", processed=mark(event_id=ids[0], result="second")),  # first result wins
            u(wamid="marked.unknown", processed=mark(event_id=ids[2], result="r")),  # no link: still marked
        ]
    )
    got = await mapper.stub.UpdateMessageStatuses(request)
    assert [x.bitrix_status for x in got.links] == ["read"] * 3
    check = await mapper.stub.CheckProcessedMany(pb.CheckProcessedManyRequest(event_ids=ids))
    assert [(c.processed, c.result) for c in check.results] == [
        (True, "first"),
        (True, "reading"),
        (True, "r"),
    ]
    # A mark that is invalid fails the whole request, and nothing of it is recorded.
    bad = pb.UpdateMessageStatusesRequest(
        updates=[
            u(wamid="marked.1", whatsapp_status="read", processed=mark(event_id="ev.marked.bad")),
            u(wamid="marked.1", processed=mark(event_id="")),
        ]
    )
    await expect_code(mapper.stub.UpdateMessageStatuses(bad), grpc.StatusCode.INVALID_ARGUMENT)
    check = await mapper.stub.CheckProcessed(pb.CheckProcessedRequest(event_id="ev.marked.bad"))
    assert not check.processed
    found = await mapper.stub.FindMessageLink(pb.FindMessageLinkRequest(wamid="marked.1"))
    assert found.whatsapp_status != "read"
