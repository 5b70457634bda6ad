"""The cost ledger on real PostgreSQL: each message's pricing counted once, whatever comes again."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime

import grpc
from mapper.ledger import usage_report
from mapper_support import Mapper, expect_code
from prometheus_client import REGISTRY
from zaptrix.v1 import events_pb2
from zaptrix.v1 import mapper_pb2 as pb

FREE = events_pb2.Pricing(
    billable=False, pricing_model="PMP", category="service", type="free_customer_service"
)
MARKETING = events_pb2.Pricing(billable=True, pricing_model="PMP", category="marketing", type="regular")


async def linked(mapper: Mapper, pnid: str, member: str, wa_id: str, *wamids: str) -> None:
    await mapper.bind(pnid, member)
    conv = await mapper.conversation(pnid, wa_id)
    for wamid in wamids:
        await mapper.stub.LinkMessage(
            pb.LinkMessageRequest(
                link=pb.MessageLink(wamid=wamid, conversation_id=conv.id, direction=pb.DIRECTION_OUTBOUND)
            )
        )


def status(
    wamid: str, value: str, pricing: events_pb2.Pricing | None, at: datetime, event: str = ""
) -> pb.UpdateMessageStatusRequest:
    req = pb.UpdateMessageStatusRequest(wamid=wamid, whatsapp_status=value)
    if pricing is not None:
        req.pricing.CopyFrom(pricing)
    req.at.FromDatetime(at)
    if event:
        req.processed.CopyFrom(
            pb.MarkProcessedRequest(event_id=event, result="imconnector.send.status.delivery")
        )
    return req


async def ledger(mapper: Mapper) -> list[tuple[object, ...]]:
    rows = await mapper.sql(
        "SELECT member_id, phone_number_id, month, category, pricing_type, pricing_model, billable, messages"
        " FROM mapper.usage_monthly ORDER BY 1, 2, 3, 4, 5, 6, 7"
    )
    return [tuple(r) for r in rows]


def counted(pnid: str, category: str, billable: str) -> float:
    labels = {"phone_number_id": pnid, "category": category, "billable": billable}
    return REGISTRY.get_sample_value("zaptrix_usage_messages_total", labels) or 0.0


NOV = datetime(2026, 11, 3, 10, tzinfo=UTC)


async def test_a_message_is_counted_once_at_delivery_whatever_comes_again(mapper: Mapper) -> None:
    await linked(mapper, "1001", "portal-a", "4917", "w.1", "w.2", "w.3")
    before = counted("1001", "service", "false")
    many = mapper.stub.UpdateMessageStatuses
    # sent carries pricing too, but a message never delivered is not billed: not counted.
    await many(pb.UpdateMessageStatusesRequest(updates=[status("w.1", "sent", FREE, NOV)]))
    assert await ledger(mapper) == []
    # Delivered, in a batch with the read of another message (its delivered never came): both counted.
    batch = [
        status("w.1", "delivered", FREE, NOV, "wa-status:w.1:delivered"),
        status("w.2", "read", FREE, NOV),
    ]
    await many(pb.UpdateMessageStatusesRequest(updates=batch))
    row = ("portal-a", "1001", date(2026, 11, 1), "service", "free_customer_service", "PMP", False, 2)
    assert await ledger(mapper) == [row]
    # Meta sends the webhook again, Kafka delivers the event again, the read follows: nothing more.
    await many(pb.UpdateMessageStatusesRequest(updates=batch))
    await many(
        pb.UpdateMessageStatusesRequest(
            updates=[status("w.1", "read", FREE, NOV), status("w.1", "delivered", FREE, NOV)]
        )
    )
    await mapper.stub.UpdateMessageStatus(status("w.2", "delivered", FREE, NOV))
    assert await ledger(mapper) == [row]
    assert counted("1001", "service", "false") - before == 2
    # The single RPC counts as well; an unknown wamid counts nothing (and is NOT_FOUND as before).
    await mapper.stub.UpdateMessageStatus(status("w.3", "delivered", MARKETING, NOV))
    await expect_code(
        mapper.stub.UpdateMessageStatus(status("w.none", "delivered", MARKETING, NOV)),
        grpc.StatusCode.NOT_FOUND,
    )
    assert (await ledger(mapper))[0] == (
        "portal-a",
        "1001",
        date(2026, 11, 1),
        "marketing",
        "regular",
        "PMP",
        True,
        1,
    )
    assert counted("1001", "marketing", "true") >= 1
    # The mark is on the links (as long as they live), beside the status's own dedupe record.
    marks = await mapper.sql("SELECT wamid FROM mapper.message_link WHERE usage_counted ORDER BY 1")
    assert [r["wamid"] for r in marks] == ["w.1", "w.2", "w.3"]
    processed = await mapper.sql("SELECT event_id FROM mapper.processed_event ORDER BY 1")
    assert [r["event_id"] for r in processed] == ["wa-status:w.1:delivered"]


async def test_a_read_long_after_the_dedupe_records_expired_adds_nothing(mapper: Mapper) -> None:
    """A customer may read a message weeks later: the link's mark, not a dedupe record, keeps it counted."""
    await linked(mapper, "1001", "portal-a", "4917", "late.1")
    many = mapper.stub.UpdateMessageStatuses
    await many(pb.UpdateMessageStatusesRequest(updates=[status("late.1", "delivered", MARKETING, NOV)]))
    await mapper.sql("DELETE FROM mapper.processed_event")  # retention removed every dedupe record
    await many(pb.UpdateMessageStatusesRequest(updates=[status("late.1", "read", MARKETING, NOV)]))
    assert [r[-1] for r in await ledger(mapper)] == [1]


async def test_concurrent_redeliveries_count_once(mapper: Mapper) -> None:
    await linked(mapper, "1001", "portal-a", "4917", *(f"c.{n}" for n in range(20)))
    batch = [status(f"c.{n}", "delivered", MARKETING, NOV) for n in range(20)]
    # Eight replicas get the same statuses at once (a rebalance, Meta's retries): each wamid once.
    await asyncio.gather(
        *(
            mapper.stub.UpdateMessageStatuses(pb.UpdateMessageStatusesRequest(updates=batch[::step]))
            for step in (1, 1, 1, 1, -1, -1, 2, 3)
        )
    )
    assert await ledger(mapper) == [
        ("portal-a", "1001", date(2026, 11, 1), "marketing", "regular", "PMP", True, 20)
    ]


async def test_months_portals_and_channels_stay_apart(mapper: Mapper) -> None:
    await linked(mapper, "1001", "portal-a", "4917", "m.1", "m.2")
    await linked(mapper, "2002", "portal-b", "4917", "m.3")
    october_end = datetime(2026, 10, 31, 23, 59, 59, tzinfo=UTC)  # UTC calendar months
    await mapper.stub.UpdateMessageStatuses(
        pb.UpdateMessageStatusesRequest(
            updates=[
                status("m.1", "delivered", MARKETING, october_end),
                status("m.2", "delivered", MARKETING, NOV),
                status("m.3", "delivered", MARKETING, NOV),
            ]
        )
    )
    async with mapper.db.connection() as conn:
        a_oct = await usage_report(conn, "portal-a", date(2026, 10, 1), None)
        a_nov = await usage_report(conn, "portal-a", date(2026, 11, 1), None)
        b_nov = await usage_report(conn, "portal-b", date(2026, 11, 1), None)
        b_other = await usage_report(conn, "portal-b", date(2026, 11, 1), "1001")
    assert [(r.phone_number_id, r.messages) for r in a_oct] == [("1001", 1)]
    assert [(r.phone_number_id, r.messages) for r in a_nov] == [("1001", 1)]
    assert [(r.phone_number_id, r.messages) for r in b_nov] == [("2002", 1)]
    assert b_other == []  # portal b asking for portal a's channel sees nothing


async def test_pricing_fields_are_bounded(mapper: Mapper) -> None:
    await linked(mapper, "1001", "portal-a", "4917", "b.1")
    huge = events_pb2.Pricing(billable=True, category="x" * 41)
    await expect_code(
        mapper.stub.UpdateMessageStatuses(
            pb.UpdateMessageStatusesRequest(updates=[status("b.1", "delivered", huge, NOV)])
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    # A clock far in the future books the message now, not next year.
    future = datetime(2031, 1, 1, tzinfo=UTC)
    await mapper.stub.UpdateMessageStatuses(
        pb.UpdateMessageStatusesRequest(updates=[status("b.1", "delivered", MARKETING, future)])
    )
    (row,) = await ledger(mapper)
    assert row[2] < date(2031, 1, 1)
