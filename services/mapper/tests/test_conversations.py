from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from mapper_support import Mapper, expect_code
from zaptrix.v1 import mapper_pb2 as pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def ts(value: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(value)
    return out


async def test_get_or_create_creates_once_with_a_stable_opaque_external_chat_id(mapper: Mapper) -> None:
    await mapper.bind("106540352242922", "portal-a")
    request = pb.GetOrCreateConversationRequest(
        phone_number_id="106540352242922", wa_id="16505551234", contact_name="Ana"
    )
    first = await mapper.stub.GetOrCreateConversation(request)
    assert first.created
    c = first.conversation
    assert uuid.UUID(c.id)
    assert (c.phone_number_id, c.wa_id, c.member_id) == ("106540352242922", "16505551234", "portal-a")
    assert re.fullmatch(r"wa_[0-9a-f]{32}", c.external_chat_id), c.external_chat_id
    assert "106540352242922" not in c.external_chat_id and "16505551234" not in c.external_chat_id
    assert c.contact_name == "Ana" and c.created_at.seconds > 0
    assert not c.HasField("last_message_at") and c.bitrix_chat_id == ""

    again = await mapper.stub.GetOrCreateConversation(request)
    assert not again.created
    assert again.conversation == c


async def test_fifty_concurrent_first_messages_make_one_conversation(mapper: Mapper) -> None:
    await mapper.bind("1001", "portal-a")
    customers = [f"1555000{i:04d}" for i in range(4)]  # four independent races: losing one is not luck
    for wa_id in customers:
        request = pb.GetOrCreateConversationRequest(phone_number_id="1001", wa_id=wa_id)
        responses = await asyncio.gather(*(mapper.stub.GetOrCreateConversation(request) for _ in range(50)))
        assert sum(r.created for r in responses) == 1
        assert len({r.conversation.id for r in responses}) == 1
    rows = await mapper.sql("SELECT meta_whatsapp_id FROM mapper.conversation_mapping ORDER BY 1")
    assert [r["meta_whatsapp_id"] for r in rows] == customers


async def test_the_same_customer_on_two_channels_has_two_conversations(mapper: Mapper) -> None:
    await mapper.bind("1001", "portal-a")
    await mapper.bind("1002", "portal-b")
    a = await mapper.conversation("1001", "15550001111")
    b = await mapper.conversation("1002", "15550001111")
    assert a.id != b.id
    assert a.external_chat_id != b.external_chat_id
    assert (a.member_id, b.member_id) == ("portal-a", "portal-b")


async def test_get_or_create_errors(mapper: Mapper) -> None:
    precondition = grpc.StatusCode.FAILED_PRECONDITION
    details = await expect_code(mapper.conversation("9999"), precondition)
    assert "not bound" in details
    await mapper.bind("1001", "portal-a", active=False)
    assert "inactive" in await expect_code(mapper.conversation("1001"), precondition)
    await mapper.bind("1001", "portal-a")
    await expect_code(mapper.conversation("1001", wa_id=""), INVALID)
    await expect_code(mapper.conversation("", wa_id="1555"), INVALID)
    await expect_code(mapper.conversation("1001", wa_id="1555\x00"), INVALID)
    assert await mapper.sql("SELECT * FROM mapper.conversation_mapping") == []


def by_chat(member_id: str, external_chat_id: str) -> pb.FindConversationRequest:
    return pb.FindConversationRequest(
        portal_external_chat=pb.PortalExternalChat(member_id=member_id, external_chat_id=external_chat_id)
    )


async def test_unusual_customer_ids_still_give_a_bitrix_safe_external_chat_id(mapper: Mapper) -> None:
    await mapper.bind("1001", "portal-a")
    odd = await mapper.conversation("1001", "US.13491208655302741918")  # a business-scoped user id
    assert odd.external_chat_id.startswith("wa_")
    assert odd.external_chat_id.replace("_", "").isalnum()
    assert odd.wa_id == "US.13491208655302741918"
    found = await mapper.stub.FindConversation(by_chat("portal-a", odd.external_chat_id))
    assert found.id == odd.id


async def test_the_chat_lookup_is_scoped_to_the_portal_and_hides_other_portals_chats(mapper: Mapper) -> None:
    await mapper.bind("1001", "portal-a")
    await mapper.bind("2001", "portal-b")
    a = await mapper.conversation("1001", "15550001111")
    found = await mapper.stub.FindConversation(by_chat("portal-a", a.external_chat_id))
    assert found.id == a.id
    # Portal B names A's chat: the same answer as for a chat that does not exist at all.
    foreign = await expect_code(
        mapper.stub.FindConversation(by_chat("portal-b", a.external_chat_id)), NOT_FOUND
    )
    unknown = await expect_code(
        mapper.stub.FindConversation(by_chat("portal-b", "wa_" + "0" * 32)), NOT_FOUND
    )
    assert foreign.replace(a.external_chat_id, "X") == unknown.replace("wa_" + "0" * 32, "X")
    assert "portal-a" not in foreign and "15550001111" not in foreign


async def test_chat_ids_in_the_earlier_derived_form_keep_working_for_their_portal_only(
    mapper: Mapper,
) -> None:
    await mapper.bind("1001", "portal-a")
    await mapper.bind("2001", "portal-b")
    c = await mapper.conversation("1001", "15550002222")
    legacy = "wa_1001_15550002222"  # what conversations created before opaque ids carry
    await mapper.sql(
        "UPDATE mapper.conversation_mapping SET external_chat_id = $1 WHERE id = $2", legacy, c.id
    )
    assert (await mapper.stub.FindConversation(by_chat("portal-a", legacy))).id == c.id
    await expect_code(mapper.stub.FindConversation(by_chat("portal-b", legacy)), NOT_FOUND)


async def test_find_conversation_by_every_key(mapper: Mapper) -> None:
    await mapper.bind("1001", "portal-a")
    c = await mapper.conversation("1001", "15550001111")
    await mapper.stub.UpdateConversation(pb.UpdateConversationRequest(id=c.id, bitrix_chat_id="1807"))

    by_id = await mapper.stub.FindConversation(pb.FindConversationRequest(id=c.id))
    by_customer = await mapper.stub.FindConversation(
        pb.FindConversationRequest(
            channel_customer=pb.ChannelCustomer(phone_number_id="1001", wa_id="15550001111")
        )
    )
    by_external = await mapper.stub.FindConversation(by_chat("portal-a", c.external_chat_id))
    by_bitrix = await mapper.stub.FindConversation(
        pb.FindConversationRequest(bitrix_chat=pb.PortalChat(member_id="portal-a", bitrix_chat_id="1807"))
    )
    assert {by_id.id, by_customer.id, by_external.id, by_bitrix.id} == {c.id}
    assert by_bitrix.bitrix_chat_id == "1807"


async def test_reverse_lookup_is_per_portal(mapper: Mapper) -> None:
    await mapper.bind("1001", "portal-a")
    await mapper.bind("2001", "portal-b")
    a = await mapper.conversation("1001")
    b = await mapper.conversation("2001")
    for conv in (a, b):  # the same internal chat id exists in both portals
        await mapper.stub.UpdateConversation(pb.UpdateConversationRequest(id=conv.id, bitrix_chat_id="55"))
    for member, expected in (("portal-a", a.id), ("portal-b", b.id)):
        found = await mapper.stub.FindConversation(
            pb.FindConversationRequest(bitrix_chat=pb.PortalChat(member_id=member, bitrix_chat_id="55"))
        )
        assert found.id == expected


async def test_find_conversation_errors(mapper: Mapper) -> None:
    find = mapper.stub.FindConversation
    await expect_code(find(pb.FindConversationRequest()), INVALID)  # no key at all
    await expect_code(find(pb.FindConversationRequest(id="not-a-uuid")), INVALID)
    await expect_code(find(pb.FindConversationRequest(id=str(uuid.uuid4()))), NOT_FOUND)
    await expect_code(find(by_chat("portal-a", "wa_1_2")), NOT_FOUND)
    await expect_code(find(by_chat("portal-a", "")), INVALID)
    await expect_code(find(by_chat("", "wa_1_2")), INVALID)
    await expect_code(
        find(pb.FindConversationRequest(bitrix_chat=pb.PortalChat(member_id="", bitrix_chat_id="1"))), INVALID
    )
    await expect_code(
        find(pb.FindConversationRequest(channel_customer=pb.ChannelCustomer(phone_number_id="1", wa_id=""))),
        INVALID,
    )
    await expect_code(
        find(pb.FindConversationRequest(bitrix_chat=pb.PortalChat(member_id="p", bitrix_chat_id="1"))),
        NOT_FOUND,
    )


async def test_update_changes_only_present_fields(mapper: Mapper) -> None:
    await mapper.bind("1001", "portal-a")
    c = await mapper.conversation("1001")
    update = mapper.stub.UpdateConversation
    u1 = await update(
        pb.UpdateConversationRequest(
            id=c.id, bitrix_contact_id="77", bitrix_chat_id="1807", contact_name="Ana"
        )
    )
    assert (u1.bitrix_contact_id, u1.bitrix_chat_id, u1.contact_name) == ("77", "1807", "Ana")
    u2 = await update(pb.UpdateConversationRequest(id=c.id, contact_name="Ana Maria"))
    assert (u2.bitrix_contact_id, u2.bitrix_chat_id, u2.contact_name) == ("77", "1807", "Ana Maria")
    u3 = await update(pb.UpdateConversationRequest(id=c.id, bitrix_contact_id=""))  # present and empty: clear
    assert (u3.bitrix_contact_id, u3.bitrix_chat_id) == ("", "1807")
    rows = await mapper.sql("SELECT bitrix_contact_id FROM mapper.conversation_mapping")
    assert rows[0]["bitrix_contact_id"] is None
    u4 = await update(pb.UpdateConversationRequest(id=c.id))  # nothing present: a read
    assert u4 == u3


async def test_timestamps_only_move_forward(mapper: Mapper) -> None:
    await mapper.bind("1001", "portal-a")
    c = await mapper.conversation("1001")
    now = datetime.now(UTC).replace(microsecond=0)
    earlier, later = now - timedelta(minutes=5), now
    update = mapper.stub.UpdateConversation

    r = await update(pb.UpdateConversationRequest(id=c.id, last_customer_message_at=ts(later)))
    assert r.last_customer_message_at.ToDatetime(UTC) == later
    assert r.last_message_at.ToDatetime(UTC) == later  # a customer message is a message too
    r = await update(
        pb.UpdateConversationRequest(
            id=c.id, last_customer_message_at=ts(earlier), last_message_at=ts(earlier)
        )
    )
    assert r.last_customer_message_at.ToDatetime(UTC) == later  # a late redelivery cannot close the window
    assert r.last_message_at.ToDatetime(UTC) == later
    newest = later + timedelta(seconds=30)
    r = await update(pb.UpdateConversationRequest(id=c.id, last_message_at=ts(newest)))
    assert r.last_message_at.ToDatetime(UTC) == newest
    assert r.last_customer_message_at.ToDatetime(UTC) == later


async def test_update_errors(mapper: Mapper) -> None:
    await mapper.bind("1001", "portal-a")
    c = await mapper.conversation("1001")
    update = mapper.stub.UpdateConversation
    await expect_code(update(pb.UpdateConversationRequest(id=str(uuid.uuid4()), contact_name="x")), NOT_FOUND)
    await expect_code(update(pb.UpdateConversationRequest(id=str(uuid.uuid4()))), NOT_FOUND)
    await expect_code(update(pb.UpdateConversationRequest(id="")), INVALID)
    await expect_code(update(pb.UpdateConversationRequest(id="123", contact_name="x")), INVALID)
    await expect_code(update(pb.UpdateConversationRequest(id=c.id, contact_name="A\x00")), INVALID)
    far_future = datetime.now(UTC) + timedelta(days=30)
    await expect_code(update(pb.UpdateConversationRequest(id=c.id, last_message_at=ts(far_future))), INVALID)
    bad = Timestamp(seconds=1, nanos=-5)
    await expect_code(update(pb.UpdateConversationRequest(id=c.id, last_message_at=bad)), INVALID)
    rows = await mapper.sql("SELECT contact_name, last_message_at FROM mapper.conversation_mapping")
    assert (rows[0]["contact_name"], rows[0]["last_message_at"]) == (None, None)
