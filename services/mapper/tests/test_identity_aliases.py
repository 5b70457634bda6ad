"""Customers as people: one conversation per person and channel through phone, BSUID and username changes
(real PostgreSQL)."""

from __future__ import annotations

import asyncio

import grpc
from mapper_support import Mapper, expect_code
from zaptrix.v1 import mapper_pb2 as pb

CH = "106540352242922"
BSUID = "US.13491208655302741918"
NEW_BSUID = "US.99991208655302741918"
PARENT = "US.ENT.11815799212886844830"


def ask(**kw: str) -> pb.GetOrCreateConversationRequest:
    return pb.GetOrCreateConversationRequest(phone_number_id=CH, **kw)


async def test_a_bsuid_only_customer_gets_an_opaque_bitrix_user_id_and_no_phone(mapper: Mapper) -> None:
    await mapper.bind(CH, "portal-a")
    got = await mapper.stub.GetOrCreateConversation(ask(user_id=BSUID, username="ana.s", contact_name="Ana"))
    c = got.conversation
    assert got.created and c.wa_id == BSUID  # the key: the BSUID when no phone is known
    assert (c.customer_phone, c.customer_user_id, c.customer_username) == ("", BSUID, "ana.s")
    assert c.bitrix_user_id == c.external_chat_id and BSUID not in c.bitrix_user_id
    for kind, value in ((pb.IDENTITY_ALIAS_KIND_BSUID, BSUID), (pb.IDENTITY_ALIAS_KIND_USERNAME, "ana.s")):
        found = await mapper.stub.FindConversationByIdentityAlias(
            pb.FindConversationByIdentityAliasRequest(phone_number_id=CH, kind=kind, value=value)
        )
        assert found.id == c.id


async def test_the_phone_arriving_later_finds_the_same_conversation_and_keeps_its_ids(mapper: Mapper) -> None:
    await mapper.bind(CH, "portal-a")
    first = (await mapper.stub.GetOrCreateConversation(ask(user_id=BSUID))).conversation
    later = await mapper.stub.GetOrCreateConversation(ask(wa_id="5511987654321", user_id=BSUID))
    assert not later.created and later.conversation.id == first.id
    assert later.conversation.customer_phone == "5511987654321"
    assert later.conversation.wa_id == BSUID and later.conversation.bitrix_user_id == first.bitrix_user_id
    # the phone alone (an old-style caller) now finds it too: no second conversation
    by_phone = await mapper.stub.GetOrCreateConversation(ask(wa_id="5511987654321"))
    assert not by_phone.created and by_phone.conversation.id == first.id
    rows = await mapper.sql("SELECT count(*) AS n FROM mapper.conversation_mapping")
    assert rows[0]["n"] == 1
    # a status names the customer by the phone we sent to: FindConversation by customer finds it too
    by_customer = pb.FindConversationRequest(
        channel_customer=pb.ChannelCustomer(phone_number_id=CH, wa_id="5511987654321")
    )
    assert (await mapper.stub.FindConversation(by_customer)).id == first.id


async def test_two_conversations_of_one_person_are_merged_into_the_oldest(mapper: Mapper) -> None:
    await mapper.bind(CH, "portal-a")
    by_phone = (await mapper.stub.GetOrCreateConversation(ask(wa_id="491701234567"))).conversation
    by_bsuid = (await mapper.stub.GetOrCreateConversation(ask(user_id=BSUID))).conversation
    assert by_phone.id != by_bsuid.id
    link = pb.MessageLink(conversation_id=by_bsuid.id, direction=pb.DIRECTION_INBOUND, wamid="wamid.SECOND")
    await mapper.stub.LinkMessage(pb.LinkMessageRequest(link=link))
    both = await mapper.stub.GetOrCreateConversation(ask(wa_id="491701234567", user_id=BSUID))
    assert both.conversation.id == by_phone.id and list(both.merged_conversation_ids) == [by_bsuid.id]
    rows = await mapper.sql("SELECT id::text FROM mapper.conversation_mapping")
    assert [r["id"] for r in rows] == [by_phone.id]
    moved = await mapper.stub.FindMessageLink(pb.FindMessageLinkRequest(wamid="wamid.SECOND"))
    assert moved.conversation_id == by_phone.id
    again = await mapper.stub.GetOrCreateConversation(ask(user_id=BSUID))
    assert again.conversation.id == by_phone.id and not again.created


async def test_a_number_change_keeps_the_conversation_and_frees_the_old_number(mapper: Mapper) -> None:
    await mapper.bind(CH, "portal-a")
    old = (await mapper.stub.GetOrCreateConversation(ask(wa_id="491701234567", user_id=BSUID))).conversation
    changed = await mapper.stub.ApplyIdentityChange(
        pb.IdentityChangeRequest(
            phone_number_id=CH,
            previous_wa_id="491701234567",
            previous_user_id=BSUID,
            wa_id="491709999999",
            user_id=NEW_BSUID,
        )
    )
    c = changed.conversation
    assert c.id == old.id and (c.customer_phone, c.customer_user_id) == ("491709999999", NEW_BSUID)
    assert c.bitrix_user_id == old.bitrix_user_id and c.external_chat_id == old.external_chat_id
    new_msg = await mapper.stub.GetOrCreateConversation(ask(wa_id="491709999999", user_id=NEW_BSUID))
    assert new_msg.conversation.id == old.id and not new_msg.created
    # the old number now belongs to someone else: a new person, not this conversation
    stranger = await mapper.stub.GetOrCreateConversation(ask(wa_id="491701234567", user_id="US.555"))
    assert stranger.created and stranger.conversation.id != old.id


async def test_a_bsuid_only_change_moves_the_person_to_the_new_bsuid(mapper: Mapper) -> None:
    await mapper.bind(CH, "portal-a")
    old = (await mapper.stub.GetOrCreateConversation(ask(user_id=BSUID, parent_user_id=PARENT))).conversation
    await mapper.stub.ApplyIdentityChange(
        pb.IdentityChangeRequest(phone_number_id=CH, previous_user_id=BSUID, user_id=NEW_BSUID)
    )
    got = await mapper.stub.GetOrCreateConversation(ask(user_id=NEW_BSUID))
    assert got.conversation.id == old.id and got.conversation.customer_user_id == NEW_BSUID


async def test_an_unknown_previous_identity_is_not_found_and_creates_nothing(mapper: Mapper) -> None:
    await mapper.bind(CH, "portal-a")
    await expect_code(
        mapper.stub.ApplyIdentityChange(
            pb.IdentityChangeRequest(phone_number_id=CH, previous_user_id=BSUID, user_id=NEW_BSUID)
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    rows = await mapper.sql("SELECT count(*) AS n FROM mapper.conversation_mapping")
    assert rows[0]["n"] == 0


async def test_concurrent_first_messages_with_overlapping_identities_make_one_conversation(
    mapper: Mapper,
) -> None:
    await mapper.bind(CH, "portal-a")
    requests = [
        ask(user_id=BSUID),
        ask(wa_id="5215512345678", user_id=BSUID),
        ask(wa_id="5215512345678"),
    ] * 10
    await asyncio.gather(*(mapper.stub.GetOrCreateConversation(r) for r in requests))
    rows = await mapper.sql("SELECT id::text FROM mapper.conversation_mapping")
    assert len(rows) == 1
    # Which conversation an answer in flight names depends on the order the requests ran in (one may run
    # before the merge and name a merged one: its links move with the merge); once they are done, every
    # identifier finds the survivor. (Asserting on the last three answers of the batch failed under load.)
    again = [await mapper.stub.GetOrCreateConversation(r) for r in requests[:3]]
    assert {a.conversation.id for a in again} == {rows[0]["id"]}


async def test_hostile_identifiers_are_refused(mapper: Mapper) -> None:
    await mapper.bind(CH, "portal-a")
    for bad in (ask(user_id="not a bsuid"), ask(user_id="US." + "1" * 200), ask(username="a b"), ask()):
        await expect_code(mapper.stub.GetOrCreateConversation(bad), grpc.StatusCode.INVALID_ARGUMENT)


async def test_a_known_customer_writing_again_writes_nothing_and_new_details_are_still_recorded(
    mapper: Mapper,
) -> None:
    await mapper.bind(CH, "portal-a")
    first = (
        await mapper.stub.GetOrCreateConversation(ask(wa_id="491701112233", contact_name="Ana"))
    ).conversation

    async def state() -> tuple[object, int]:
        rows = await mapper.sql(
            "SELECT c.updated_at, (SELECT count(*) FROM mapper.conversation_alias a"
            " WHERE a.conversation_id = c.id) AS n FROM mapper.conversation_mapping c"
        )
        return rows[0]["updated_at"], rows[0]["n"]

    before = await state()
    for _ in range(3):  # the hot path: the same person again, nothing new about them
        again = await mapper.stub.GetOrCreateConversation(ask(wa_id="491701112233", contact_name="Ana"))
        assert not again.created and again.conversation.id == first.id
    assert await state() == before
    # Something new (a username, then a BSUID) is recorded as before.
    named = await mapper.stub.GetOrCreateConversation(ask(wa_id="491701112233", username="ana.s"))
    assert named.conversation.customer_username == "ana.s"
    with_bsuid = await mapper.stub.GetOrCreateConversation(ask(wa_id="491701112233", user_id=BSUID))
    assert with_bsuid.conversation.id == first.id and with_bsuid.conversation.customer_user_id == BSUID
    assert (await state())[1] == before[1] + 2
    by_bsuid = await mapper.stub.GetOrCreateConversation(ask(user_id=BSUID))
    assert not by_bsuid.created and by_bsuid.conversation.id == first.id
