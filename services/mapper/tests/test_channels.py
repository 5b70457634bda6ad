from __future__ import annotations

import grpc
from mapper_support import Mapper, expect_code
from zaptrix.v1 import mapper_pb2 as pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def test_bind_get_list_round_trip(mapper: Mapper) -> None:
    bound = await mapper.bind(
        "1001",
        "portal-a",
        crm_mode=pb.CRM_MODE_OPEN_LINE,
        reengagement_template="hello_again",
        template_language="pt_BR",
    )
    assert bound.created_at.seconds > 0
    got = await mapper.stub.GetChannel(pb.GetChannelRequest(phone_number_id="1001"))
    assert got == bound
    assert (got.member_id, got.line_id, got.connector_id) == ("portal-a", 7, "zaptrix_whatsapp")
    assert got.crm_mode == pb.CRM_MODE_OPEN_LINE and got.active
    assert (got.reengagement_template, got.template_language) == ("hello_again", "pt_BR")

    await mapper.bind("1002", "portal-a")
    await mapper.bind("2001", "portal-b")
    every = await mapper.stub.ListChannels(pb.ListChannelsRequest())
    assert [c.phone_number_id for c in every.channels] == ["1001", "1002", "2001"]
    only_a = await mapper.stub.ListChannels(pb.ListChannelsRequest(member_id="portal-a"))
    assert [c.phone_number_id for c in only_a.channels] == ["1001", "1002"]
    none = await mapper.stub.ListChannels(pb.ListChannelsRequest(member_id="portal-z"))
    assert list(none.channels) == []


async def test_unspecified_crm_mode_means_gateway_and_rebinding_replaces(mapper: Mapper) -> None:
    first = await mapper.bind("1001", "portal-a")
    assert first.crm_mode == pb.CRM_MODE_GATEWAY
    second = await mapper.bind("1001", "portal-a", line_id=9, active=False)
    assert (second.line_id, second.active) == (9, False)
    assert second.created_at == first.created_at  # the same binding, updated
    rows = await mapper.sql("SELECT line_id, updated_at > created_at AS moved FROM mapper.channel_binding")
    assert [(r["line_id"], r["moved"]) for r in rows] == [(9, True)]


async def test_channel_errors(mapper: Mapper) -> None:
    await expect_code(
        mapper.stub.GetChannel(pb.GetChannelRequest(phone_number_id="404")), grpc.StatusCode.NOT_FOUND
    )
    await expect_code(mapper.stub.GetChannel(pb.GetChannelRequest()), INVALID)
    await expect_code(mapper.stub.BindChannel(pb.BindChannelRequest()), INVALID)
    await expect_code(mapper.bind("1001", member_id=""), INVALID)
    await expect_code(mapper.bind("", "portal-a"), INVALID)
    await expect_code(mapper.bind("1001", "portal-a", line_id=0), INVALID)
    await expect_code(mapper.bind("1001", "portal-a", connector_id=" "), INVALID)
    await expect_code(mapper.bind("1001", "portal-a", crm_mode=99), INVALID)  # unknown enum value
    details = await expect_code(mapper.bind("1001", "portal-a", reengagement_template="hi"), INVALID)
    assert "template_language" in details
    await expect_code(mapper.bind("10\x0001", "portal-a"), INVALID)  # PostgreSQL text cannot hold NUL
    await expect_code(mapper.bind("1" * 300, "portal-a"), INVALID)
    assert await mapper.sql("SELECT * FROM mapper.channel_binding") == []


async def test_a_number_moves_portal_only_while_it_has_no_conversations(mapper: Mapper) -> None:
    await mapper.bind("1001", "portal-a")
    moved = await mapper.bind("1001", "portal-b")  # a typo fixed before any traffic
    assert moved.member_id == "portal-b"
    conversation = await mapper.conversation("1001")
    assert conversation.member_id == "portal-b"
    details = await expect_code(mapper.bind("1001", "portal-a"), grpc.StatusCode.ALREADY_EXISTS)
    assert "portal-b" in details
    got = await mapper.stub.GetChannel(pb.GetChannelRequest(phone_number_id="1001"))
    assert got.member_id == "portal-b"


async def test_channel_cache_serves_reads_and_bind_channel_invalidates_it(mapper: Mapper) -> None:
    await mapper.bind("1001", "portal-a", line_id=7)
    first = await mapper.stub.GetChannel(pb.GetChannelRequest(phone_number_id="1001"))
    # Another replica (or an operator in psql) changes the row: this process keeps serving its cached
    # copy, which proves the read does not touch the database ...
    await mapper.sql("UPDATE mapper.channel_binding SET line_id = 8 WHERE phone_number_id = '1001'")
    cached = await mapper.stub.GetChannel(pb.GetChannelRequest(phone_number_id="1001"))
    assert cached.line_id == first.line_id == 7
    # ... until a BindChannel in this process invalidates it.
    await mapper.bind("1001", "portal-a", line_id=9)
    fresh = await mapper.stub.GetChannel(pb.GetChannelRequest(phone_number_id="1001"))
    assert fresh.line_id == 9


async def test_inactive_bindings_are_never_cached(mapper: Mapper) -> None:
    await mapper.bind("1001", "portal-a", active=False)
    got = await mapper.stub.GetChannel(pb.GetChannelRequest(phone_number_id="1001"))
    assert not got.active
    await expect_code(mapper.conversation("1001"), grpc.StatusCode.FAILED_PRECONDITION)
    # Activated by another replica: seen at once here, no TTL to wait out.
    await mapper.sql("UPDATE mapper.channel_binding SET active = true WHERE phone_number_id = '1001'")
    assert (await mapper.stub.GetChannel(pb.GetChannelRequest(phone_number_id="1001"))).active
    assert (await mapper.conversation("1001")).member_id == "portal-a"
