"""RecordDelivery: LinkMessage + UpdateConversation + MarkProcessed for one inbound message, atomically."""

from __future__ import annotations

import uuid

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from mapper_support import Mapper, expect_code
from zaptrix.v1 import mapper_pb2 as pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
EXISTS = grpc.StatusCode.ALREADY_EXISTS


def _ts(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds)


def delivery(
    conversation_id: str,
    *,
    wamid: str = "wamid.A",
    event_id: str = "evt-A",
    result: str = '{"chat":"1807"}',
    sent_at: int = 1_700_000_000,
    **link_fields: object,
) -> pb.RecordDeliveryRequest:
    link_fields.setdefault("direction", pb.DIRECTION_INBOUND)
    link_fields.setdefault("bitrix_chat_id", "1807")
    link_fields.setdefault("bitrix_status", "delivered")
    return pb.RecordDeliveryRequest(
        link=pb.LinkMessageRequest(
            link=pb.MessageLink(conversation_id=conversation_id, wamid=wamid, **link_fields)
        ),
        conversation=pb.UpdateConversationRequest(
            id=conversation_id,
            bitrix_chat_id="1807",
            contact_name="Anna",
            last_message_at=_ts(sent_at),
            last_customer_message_at=_ts(sent_at),
        ),
        processed=pb.MarkProcessedRequest(event_id=event_id, result=result),
    )


async def _conversation(mapper: Mapper) -> str:
    await mapper.bind("1001", "portal-a")
    return str((await mapper.conversation("1001")).id)


async def test_records_link_conversation_and_processed_together(mapper: Mapper) -> None:
    conv = await _conversation(mapper)
    reply = await mapper.stub.RecordDelivery(delivery(conv))
    assert not reply.already_processed
    assert (reply.link.wamid, reply.link.conversation_id, reply.link.direction) == (
        "wamid.A",
        conv,
        pb.DIRECTION_INBOUND,
    )
    assert (reply.link.member_id, reply.link.bitrix_chat_id, reply.link.bitrix_status) == (
        "portal-a",
        "1807",
        "delivered",
    )
    c = reply.conversation
    assert (c.id, c.bitrix_chat_id, c.contact_name) == (conv, "1807", "Anna")
    assert c.last_message_at.seconds == c.last_customer_message_at.seconds == 1_700_000_000

    # what the three separate RPCs would read back
    assert await mapper.stub.FindMessageLink(pb.FindMessageLinkRequest(wamid="wamid.A")) == reply.link
    assert await mapper.stub.FindConversation(pb.FindConversationRequest(id=conv)) == c
    check = await mapper.stub.CheckProcessed(pb.CheckProcessedRequest(event_id="evt-A"))
    assert (check.processed, check.result) == (True, '{"chat":"1807"}')
    rows = await mapper.sql("SELECT event_id, result FROM mapper.processed_event")
    assert [(r["event_id"], r["result"]) for r in rows] == [("evt-A", '{"chat":"1807"}')]


async def test_a_repeat_is_idempotent_and_timestamps_only_move_forward(mapper: Mapper) -> None:
    conv = await _conversation(mapper)
    first = await mapper.stub.RecordDelivery(delivery(conv, sent_at=1_700_000_100))
    again = await mapper.stub.RecordDelivery(delivery(conv, sent_at=1_700_000_100))
    assert again.already_processed and again.link == first.link
    assert again.conversation.last_customer_message_at.seconds == 1_700_000_100
    # an older message delivered late: its link is recorded, the conversation's clock stays
    older = await mapper.stub.RecordDelivery(
        delivery(conv, wamid="wamid.OLD", event_id="evt-OLD", sent_at=1_700_000_000)
    )
    assert not older.already_processed and older.link.wamid == "wamid.OLD"
    assert older.conversation.last_message_at.seconds == 1_700_000_100
    assert older.conversation.last_customer_message_at.seconds == 1_700_000_100
    assert len(await mapper.sql("SELECT 1 FROM mapper.message_link")) == 2


async def test_an_already_processed_event_keeps_its_first_result(mapper: Mapper) -> None:
    conv = await _conversation(mapper)
    await mapper.stub.MarkProcessed(pb.MarkProcessedRequest(event_id="evt-A", result="first"))
    reply = await mapper.stub.RecordDelivery(delivery(conv, result="second"))
    assert reply.already_processed
    assert reply.link.wamid == "wamid.A"  # link and conversation are still recorded
    assert reply.conversation.bitrix_chat_id == "1807"
    rows = await mapper.sql("SELECT result FROM mapper.processed_event WHERE event_id = 'evt-A'")
    assert [r["result"] for r in rows] == ["first"]
    # also when only the database knows (another replica marked it)
    await mapper.sql("INSERT INTO mapper.processed_event (event_id, result) VALUES ('evt-B', 'elsewhere')")
    other = await mapper.stub.RecordDelivery(delivery(conv, wamid="wamid.B", event_id="evt-B"))
    assert other.already_processed


async def test_a_conflicting_link_is_already_exists_and_records_nothing(mapper: Mapper) -> None:
    conv = await _conversation(mapper)
    await mapper.stub.LinkMessage(
        pb.LinkMessageRequest(
            link=pb.MessageLink(
                conversation_id=conv,
                wamid="wamid.A",
                direction=pb.DIRECTION_OUTBOUND,
                member_id="portal-a",
                bitrix_message_id="501",
            )
        )
    )
    await expect_code(mapper.stub.RecordDelivery(delivery(conv)), EXISTS)
    # all or nothing: neither the processed record nor the conversation update happened
    check = await mapper.stub.CheckProcessed(pb.CheckProcessedRequest(event_id="evt-A"))
    assert not check.processed
    c = await mapper.stub.FindConversation(pb.FindConversationRequest(id=conv))
    assert not c.bitrix_chat_id and not c.HasField("last_customer_message_at")


async def test_record_delivery_errors(mapper: Mapper) -> None:
    conv = await _conversation(mapper)
    await expect_code(mapper.stub.RecordDelivery(pb.RecordDeliveryRequest()), INVALID)
    no_processed = delivery(conv)
    no_processed.ClearField("processed")
    await expect_code(mapper.stub.RecordDelivery(no_processed), INVALID)
    no_event = delivery(conv, event_id="")
    await expect_code(mapper.stub.RecordDelivery(no_event), INVALID)
    other = delivery(conv)
    other.conversation.id = str(uuid.uuid4())
    await expect_code(mapper.stub.RecordDelivery(other), INVALID)
    missing = str(uuid.uuid4())
    await expect_code(mapper.stub.RecordDelivery(delivery(missing)), NOT_FOUND)
    assert not (await mapper.sql("SELECT 1 FROM mapper.processed_event"))
