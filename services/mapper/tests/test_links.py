from __future__ import annotations

import asyncio
import uuid

import grpc
from mapper_support import Mapper, expect_code
from zaptrix.v1 import mapper_pb2 as pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
EXISTS = grpc.StatusCode.ALREADY_EXISTS


async def _conversation_with_chat(
    mapper: Mapper, phone_number_id: str = "1001", member: str = "portal-a"
) -> str:
    await mapper.bind(phone_number_id, member)
    c = await mapper.conversation(phone_number_id)
    await mapper.stub.UpdateConversation(pb.UpdateConversationRequest(id=c.id, bitrix_chat_id="1807"))
    return str(c.id)


def link(conversation_id: str, wamid: str = "wamid.A", **fields: object) -> pb.LinkMessageRequest:
    fields.setdefault("direction", pb.DIRECTION_INBOUND)
    return pb.LinkMessageRequest(link=pb.MessageLink(conversation_id=conversation_id, wamid=wamid, **fields))


async def test_link_in_both_directions_and_find_it_both_ways(mapper: Mapper) -> None:
    conv = await _conversation_with_chat(mapper)
    inbound = await mapper.stub.LinkMessage(
        link(conv, "wamid.IN", bitrix_message_id="501", whatsapp_status="sent")
    )
    # member_id and bitrix_chat_id default to the conversation's
    assert (inbound.member_id, inbound.bitrix_chat_id, inbound.direction) == (
        "portal-a",
        "1807",
        pb.DIRECTION_INBOUND,
    )
    assert inbound.created_at.seconds > 0 and inbound.whatsapp_status == "sent"
    outbound = await mapper.stub.LinkMessage(
        link(
            conv, "wamid.OUT", direction=pb.DIRECTION_OUTBOUND, member_id="portal-a", bitrix_message_id="502"
        )
    )
    assert outbound.direction == pb.DIRECTION_OUTBOUND

    by_wamid = await mapper.stub.FindMessageLink(pb.FindMessageLinkRequest(wamid="wamid.OUT"))
    assert by_wamid == outbound
    by_bitrix = await mapper.stub.FindMessageLink(
        pb.FindMessageLinkRequest(
            bitrix_message=pb.PortalMessage(member_id="portal-a", bitrix_message_id="501")
        )
    )
    assert by_bitrix.wamid == "wamid.IN" and by_bitrix.conversation_id == conv


async def test_linking_is_idempotent_and_conflicts_are_already_exists(mapper: Mapper) -> None:
    conv = await _conversation_with_chat(mapper)
    first = await mapper.stub.LinkMessage(link(conv, bitrix_message_id="501"))
    again = await mapper.stub.LinkMessage(link(conv, bitrix_message_id="501"))
    assert again == first
    same_without_ids = await mapper.stub.LinkMessage(link(conv))  # a retry that knows less: same row
    assert same_without_ids == first
    concurrent = await asyncio.gather(
        *(mapper.stub.LinkMessage(link(conv, bitrix_message_id="501")) for _ in range(20))
    )
    assert all(r == first for r in concurrent)

    await expect_code(mapper.stub.LinkMessage(link(conv, bitrix_message_id="999")), EXISTS)
    await expect_code(mapper.stub.LinkMessage(link(conv, direction=pb.DIRECTION_OUTBOUND)), EXISTS)
    await expect_code(mapper.stub.LinkMessage(link(conv, bitrix_chat_id="other-chat")), EXISTS)
    # another wamid cannot claim the same Bitrix24 message of the same portal
    details = await expect_code(
        mapper.stub.LinkMessage(link(conv, "wamid.B", bitrix_message_id="501")), EXISTS
    )
    assert "501" in details
    rows = await mapper.sql("SELECT wamid, bitrix_message_id FROM mapper.message_link")
    assert [(r["wamid"], r["bitrix_message_id"]) for r in rows] == [("wamid.A", "501")]


async def test_a_link_recorded_before_bitrix_answered_is_completed_later(mapper: Mapper) -> None:
    conv = await _conversation_with_chat(mapper)
    early = await mapper.stub.LinkMessage(link(conv))
    assert early.bitrix_message_id == ""
    done = await mapper.stub.LinkMessage(link(conv, bitrix_message_id="501"))
    assert done.bitrix_message_id == "501" and done.created_at == early.created_at
    await mapper.stub.LinkMessage(link(conv, "wamid.B", bitrix_message_id="777"))
    early_c = await mapper.stub.LinkMessage(link(conv, "wamid.C"))
    assert early_c.bitrix_message_id == ""
    # completing with an id another wamid holds is a conflict, and leaves the row as it was
    await expect_code(mapper.stub.LinkMessage(link(conv, "wamid.C", bitrix_message_id="777")), EXISTS)
    assert (
        await mapper.stub.FindMessageLink(pb.FindMessageLinkRequest(wamid="wamid.C"))
    ).bitrix_message_id == ""


async def test_the_same_bitrix_message_id_in_two_portals_is_two_links(mapper: Mapper) -> None:
    a = await _conversation_with_chat(mapper, "1001", "portal-a")
    b = await _conversation_with_chat(mapper, "2001", "portal-b")
    await mapper.stub.LinkMessage(link(a, "wamid.A", bitrix_message_id="501"))
    await mapper.stub.LinkMessage(link(b, "wamid.B", bitrix_message_id="501"))
    found = await mapper.stub.FindMessageLink(
        pb.FindMessageLinkRequest(
            bitrix_message=pb.PortalMessage(member_id="portal-b", bitrix_message_id="501")
        )
    )
    assert found.wamid == "wamid.B"


async def test_the_latest_customer_message_of_a_conversation(mapper: Mapper) -> None:
    conv = await _conversation_with_chat(mapper, "3001", "portal-a")
    latest = pb.FindMessageLinkRequest(latest_customer_message_of=conv)
    await expect_code(mapper.stub.FindMessageLink(latest), grpc.StatusCode.NOT_FOUND)
    await mapper.stub.LinkMessage(link(conv, "wamid.C1", bitrix_message_id="601"))
    await mapper.stub.LinkMessage(link(conv, "wamid.C2", bitrix_message_id="602"))
    await mapper.stub.LinkMessage(
        link(conv, "wamid.R1", direction=pb.DIRECTION_OUTBOUND, member_id="portal-a", bitrix_message_id="603")
    )
    found = await mapper.stub.FindMessageLink(latest)
    assert (found.wamid, found.direction) == (
        "wamid.C2",
        pb.DIRECTION_INBOUND,
    )  # the operator's reply is not it
    bad = pb.FindMessageLinkRequest(latest_customer_message_of="not-a-uuid")
    await expect_code(mapper.stub.FindMessageLink(bad), grpc.StatusCode.INVALID_ARGUMENT)


async def test_link_errors(mapper: Mapper) -> None:
    conv = await _conversation_with_chat(mapper)
    lm = mapper.stub.LinkMessage
    await expect_code(lm(pb.LinkMessageRequest()), INVALID)
    await expect_code(lm(link(str(uuid.uuid4()))), NOT_FOUND)
    await expect_code(lm(link("nope")), INVALID)
    await expect_code(lm(link(conv, "")), INVALID)
    await expect_code(lm(link(conv, direction=pb.DIRECTION_UNSPECIFIED)), INVALID)
    await expect_code(lm(link(conv, direction=7)), INVALID)
    await expect_code(lm(link(conv, whatsapp_status="teleported")), INVALID)
    await expect_code(lm(link(conv, bitrix_status="sent")), INVALID)  # not a Bitrix24 status
    details = await expect_code(lm(link(conv, member_id="portal-z")), INVALID)
    assert "portal-z" in details
    assert await mapper.sql("SELECT * FROM mapper.message_link") == []

    find = mapper.stub.FindMessageLink
    await expect_code(find(pb.FindMessageLinkRequest()), INVALID)
    await expect_code(find(pb.FindMessageLinkRequest(wamid="wamid.none")), NOT_FOUND)
    await expect_code(
        find(
            pb.FindMessageLinkRequest(
                bitrix_message=pb.PortalMessage(member_id="portal-a", bitrix_message_id="")
            )
        ),
        INVALID,
    )


async def test_statuses_only_move_forward(mapper: Mapper) -> None:
    conv = await _conversation_with_chat(mapper)
    await mapper.stub.LinkMessage(link(conv, direction=pb.DIRECTION_OUTBOUND, whatsapp_status="accepted"))

    async def status(**fields: str) -> pb.MessageLink:
        return await mapper.stub.UpdateMessageStatus(pb.UpdateMessageStatusRequest(wamid="wamid.A", **fields))

    assert (await status(whatsapp_status="delivered")).whatsapp_status == "delivered"
    assert (await status(whatsapp_status="read", bitrix_status="delivered")).whatsapp_status == "read"
    late = await status(whatsapp_status="delivered", bitrix_status="read")  # Meta does not order webhooks
    assert (late.whatsapp_status, late.bitrix_status) == ("read", "read")
    assert (await status(bitrix_status="delivered")).bitrix_status == "read"
    assert (await status(whatsapp_status="failed")).whatsapp_status == "failed"
    assert (await status(whatsapp_status="sent")).whatsapp_status == "failed"  # terminal
    unchanged = await status()
    assert (unchanged.whatsapp_status, unchanged.bitrix_status) == ("failed", "read")


async def test_concurrent_status_webhooks_end_at_the_latest_state(mapper: Mapper) -> None:
    conv = await _conversation_with_chat(mapper)
    await mapper.stub.LinkMessage(link(conv, direction=pb.DIRECTION_OUTBOUND))
    statuses = ["sent", "delivered", "read"] * 10
    await asyncio.gather(
        *(
            mapper.stub.UpdateMessageStatus(pb.UpdateMessageStatusRequest(wamid="wamid.A", whatsapp_status=s))
            for s in statuses
        )
    )
    final = await mapper.stub.FindMessageLink(pb.FindMessageLinkRequest(wamid="wamid.A"))
    assert final.whatsapp_status == "read"


async def test_status_errors(mapper: Mapper) -> None:
    update = mapper.stub.UpdateMessageStatus
    await expect_code(
        update(pb.UpdateMessageStatusRequest(wamid="wamid.none", whatsapp_status="sent")), NOT_FOUND
    )
    await expect_code(update(pb.UpdateMessageStatusRequest(wamid="wamid.none")), NOT_FOUND)
    await expect_code(update(pb.UpdateMessageStatusRequest(whatsapp_status="sent")), INVALID)
    await expect_code(update(pb.UpdateMessageStatusRequest(wamid="w", whatsapp_status="")), INVALID)
    await expect_code(update(pb.UpdateMessageStatusRequest(wamid="w", bitrix_status="seen")), INVALID)
