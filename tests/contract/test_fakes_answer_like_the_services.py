"""The fake mapper and token-keeper of the test kit (zaptrix_testing.fakes) answer like the real services:
every test runs once against the fakes and once against the real servicers on real PostgreSQL, with the
same assertions, over the RPCs the fakes implement. A fake that drifts fails here, not in a flaky e2e run.
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from zaptrix.v1 import mapper_pb2 as mpb
from zaptrix.v1 import mapper_pb2_grpc, token_keeper_pb2_grpc
from zaptrix.v1 import token_keeper_pb2 as tpb
from zaptrix_testing.fakes import start_fakes

NOT_FOUND = grpc.StatusCode.NOT_FOUND


@dataclass
class Peers:
    mapper: mapper_pb2_grpc.MapperAsyncStub
    token_keeper: token_keeper_pb2_grpc.TokenKeeperAsyncStub


async def _real_server(request: pytest.FixtureRequest) -> AsyncIterator[grpc.aio.Server]:
    import asyncpg
    from mapper import migrate as mapper_migrate
    from mapper.repository import Repository as MapperRepository
    from mapper.service import MapperService
    from mapper.servicer import MapperServicer
    from mapper.settings import MapperSettings
    from token_keeper import migrate as tk_migrate
    from token_keeper.crypto import Keyring
    from token_keeper.oauth import BitrixOAuthClient
    from token_keeper.repository import Repository as TokenRepository
    from token_keeper.repository import database as tk_database
    from token_keeper.service import TokenService
    from token_keeper.servicer import TokenKeeperServicer
    from token_keeper.settings import TokenKeeperSettings
    from zaptrix.database import Database
    from zaptrix.settings import DatabaseSettings

    pg_server_url: str = request.getfixturevalue("pg_server_url")
    names = [f"contract_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    admin = await asyncpg.connect(pg_server_url)
    for name in names:
        await admin.execute(f'CREATE DATABASE "{name}"')
    mapper_dsn, tk_dsn = (pg_server_url.rsplit("/", 1)[0] + f"/{name}" for name in names)
    await mapper_migrate.upgrade(mapper_dsn)
    await tk_migrate.upgrade(tk_dsn)
    mapper_db = Database(DatabaseSettings(url=mapper_dsn), connect_timeout_s=5, application_name="contract")
    tk_db = tk_database(DatabaseSettings(url=tk_dsn), "contract")
    await mapper_db.open()
    await tk_db.open()
    # No refresh happens in these scenarios: the OAuth server is never called.
    settings = TokenKeeperSettings(
        environment="test", allow_insecure_http=True, bitrix_oauth_url="http://127.0.0.1:9/oauth/token/"
    )
    oauth = BitrixOAuthClient(settings)
    tokens = TokenService(tk_db, TokenRepository(Keyring({"k1": os.urandom(32)}, "k1")), oauth, settings)
    server = grpc.aio.server()
    mapper_pb2_grpc.add_MapperServicer_to_server(
        MapperServicer(MapperService(MapperRepository(mapper_db), MapperSettings())), server
    )
    token_keeper_pb2_grpc.add_TokenKeeperServicer_to_server(TokenKeeperServicer(tokens), server)
    server.add_insecure_port("127.0.0.1:0")
    try:
        yield server
    finally:
        await server.stop(None)
        await oauth.aclose()
        await tk_db.close()
        await mapper_db.close()
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.postgres)])
async def peers(request: pytest.FixtureRequest) -> AsyncIterator[Peers]:
    if request.param == "fake":
        fakes = await start_fakes()
        addr, stop = fakes.addr, fakes.server.stop
    else:
        servers = _real_server(request)
        server = await anext(servers)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        addr, stop = f"127.0.0.1:{port}", lambda _: servers.aclose()
    channel = grpc.aio.insecure_channel(addr)
    try:
        yield Peers(mapper_pb2_grpc.MapperStub(channel), token_keeper_pb2_grpc.TokenKeeperStub(channel))
    finally:
        await channel.close()
        await stop(None)


async def code_of(call: Awaitable[object]) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code()


def digits() -> str:
    return str(1_000_000_000 + uuid.uuid4().int % 9_000_000_000)


def ts(dt: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(dt)
    return out


async def bound(p: Peers, member_id: str = "portal-a") -> mpb.Channel:
    return await p.mapper.BindChannel(
        mpb.BindChannelRequest(
            channel=mpb.Channel(
                phone_number_id=digits(),
                display_phone_number="15550000001",
                member_id=member_id,
                line_id=7,
                connector_id="zaptrix_whatsapp",
                active=True,
            )
        )
    )


async def conversation(p: Peers, channel: mpb.Channel, wa_id: str = "") -> mpb.Conversation:
    r = await p.mapper.GetOrCreateConversation(
        mpb.GetOrCreateConversationRequest(phone_number_id=channel.phone_number_id, wa_id=wa_id or digits())
    )
    return r.conversation


def link_of(conv: mpb.Conversation, wamid: str, bitrix_message_id: str = "") -> mpb.MessageLink:
    return mpb.MessageLink(
        wamid=wamid,
        conversation_id=conv.id,
        direction=mpb.DIRECTION_OUTBOUND,
        member_id=conv.member_id,
        bitrix_message_id=bitrix_message_id,
    )


# --- mapper ----------------------------------------------------------------------------------------


async def test_a_bound_channel_is_found_and_listed_per_portal(peers: Peers) -> None:
    assert (
        await code_of(peers.mapper.GetChannel(mpb.GetChannelRequest(phone_number_id=digits()))) == NOT_FOUND
    )
    a, b = await bound(peers, "portal-a"), await bound(peers, "portal-b")
    got = await peers.mapper.GetChannel(mpb.GetChannelRequest(phone_number_id=a.phone_number_id))
    assert (got.member_id, got.line_id, got.connector_id, got.active) == (
        "portal-a",
        7,
        "zaptrix_whatsapp",
        True,
    )
    listed = await peers.mapper.ListChannels(mpb.ListChannelsRequest(member_id="portal-b"))
    assert [c.phone_number_id for c in listed.channels] == [b.phone_number_id]


async def test_get_or_create_makes_one_conversation_per_customer(peers: Peers) -> None:
    unbound = mpb.GetOrCreateConversationRequest(phone_number_id=digits(), wa_id=digits())
    assert await code_of(peers.mapper.GetOrCreateConversation(unbound)) == grpc.StatusCode.FAILED_PRECONDITION
    channel, wa_id = await bound(peers), digits()
    request = mpb.GetOrCreateConversationRequest(phone_number_id=channel.phone_number_id, wa_id=wa_id)
    first = await peers.mapper.GetOrCreateConversation(request)
    again = await peers.mapper.GetOrCreateConversation(request)
    assert (first.created, again.created) == (True, False)
    assert again.conversation.id == first.conversation.id
    assert first.conversation.member_id == "portal-a" and first.conversation.external_chat_id
    channel.active = False
    await peers.mapper.BindChannel(mpb.BindChannelRequest(channel=channel))
    inactive = mpb.GetOrCreateConversationRequest(phone_number_id=channel.phone_number_id, wa_id=digits())
    assert (
        await code_of(peers.mapper.GetOrCreateConversation(inactive)) == grpc.StatusCode.FAILED_PRECONDITION
    )


async def test_a_conversation_is_found_three_ways_and_not_from_another_portal(peers: Peers) -> None:
    conv = await conversation(peers, await bound(peers))
    find = peers.mapper.FindConversation
    by_id = await find(mpb.FindConversationRequest(id=conv.id))
    by_customer = await find(
        mpb.FindConversationRequest(
            channel_customer=mpb.ChannelCustomer(phone_number_id=conv.phone_number_id, wa_id=conv.wa_id)
        )
    )
    by_chat = await find(
        mpb.FindConversationRequest(
            portal_external_chat=mpb.PortalExternalChat(
                member_id=conv.member_id, external_chat_id=conv.external_chat_id
            )
        )
    )
    assert by_id.id == by_customer.id == by_chat.id == conv.id
    other_portal = mpb.PortalExternalChat(member_id="portal-b", external_chat_id=conv.external_chat_id)
    assert await code_of(find(mpb.FindConversationRequest(portal_external_chat=other_portal))) == NOT_FOUND
    assert await code_of(find(mpb.FindConversationRequest(id=str(uuid.uuid4())))) == NOT_FOUND


async def test_an_update_sets_fields_and_never_moves_time_backwards(peers: Peers) -> None:
    conv = await conversation(peers, await bound(peers))
    now = datetime.now(UTC).replace(microsecond=0)
    update = peers.mapper.UpdateConversation
    await update(
        mpb.UpdateConversationRequest(id=conv.id, contact_name="Ana", last_customer_message_at=ts(now))
    )
    older = now - timedelta(hours=1)
    got = await update(mpb.UpdateConversationRequest(id=conv.id, last_customer_message_at=ts(older)))
    assert got.contact_name == "Ana"
    assert got.last_customer_message_at.ToDatetime(tzinfo=UTC) == now
    missing = mpb.UpdateConversationRequest(id=str(uuid.uuid4()), contact_name="x")
    assert await code_of(update(missing)) == NOT_FOUND


async def test_a_link_is_idempotent_and_a_bitrix_message_has_one_wamid(peers: Peers) -> None:
    conv = await conversation(peers, await bound(peers))
    link = peers.mapper.LinkMessage
    first = await link(mpb.LinkMessageRequest(link=link_of(conv, "wamid.A", "501")))
    again = await link(mpb.LinkMessageRequest(link=link_of(conv, "wamid.A", "501")))
    assert (again.wamid, again.bitrix_message_id, again.conversation_id) == ("wamid.A", "501", conv.id)
    assert again.created_at == first.created_at
    conflict = mpb.LinkMessageRequest(link=link_of(conv, "wamid.B", "501"))
    assert await code_of(link(conflict)) == grpc.StatusCode.ALREADY_EXISTS
    orphan = link_of(conv, "wamid.C")
    orphan.conversation_id = str(uuid.uuid4())
    assert await code_of(link(mpb.LinkMessageRequest(link=orphan))) == NOT_FOUND


async def test_a_link_is_found_by_wamid_or_bitrix_message_and_takes_statuses(peers: Peers) -> None:
    conv = await conversation(peers, await bound(peers))
    await peers.mapper.LinkMessage(mpb.LinkMessageRequest(link=link_of(conv, "wamid.S", "777")))
    find = peers.mapper.FindMessageLink
    by_bitrix = mpb.PortalMessage(member_id=conv.member_id, bitrix_message_id="777")
    assert (await find(mpb.FindMessageLinkRequest(bitrix_message=by_bitrix))).wamid == "wamid.S"
    assert await code_of(find(mpb.FindMessageLinkRequest(wamid="wamid.none"))) == NOT_FOUND
    other = mpb.PortalMessage(member_id="portal-b", bitrix_message_id="777")
    assert await code_of(find(mpb.FindMessageLinkRequest(bitrix_message=other))) == NOT_FOUND
    status = mpb.UpdateMessageStatusRequest(wamid="wamid.S", whatsapp_status="delivered")
    assert (await peers.mapper.UpdateMessageStatus(status)).whatsapp_status == "delivered"
    assert (await find(mpb.FindMessageLinkRequest(wamid="wamid.S"))).whatsapp_status == "delivered"
    unknown = mpb.UpdateMessageStatusRequest(wamid="wamid.none", whatsapp_status="read")
    assert await code_of(peers.mapper.UpdateMessageStatus(unknown)) == NOT_FOUND


async def test_channel_activity_counts_per_number_of_the_asking_portal_only(peers: Peers) -> None:
    portal = f"portal-{uuid.uuid4().hex[:8]}"
    busy, quiet, foreign = (
        await bound(peers, portal),
        await bound(peers, portal),
        await bound(peers, "portal-b"),
    )
    now = datetime.now(UTC).replace(microsecond=0)
    recent, old = await conversation(peers, busy), await conversation(peers, busy)
    for conv, at in ((recent, now - timedelta(hours=1)), (old, now - timedelta(hours=30))):
        await peers.mapper.UpdateConversation(
            mpb.UpdateConversationRequest(id=conv.id, last_customer_message_at=ts(at), last_message_at=ts(at))
        )
    await peers.mapper.LinkMessage(mpb.LinkMessageRequest(link=link_of(recent, f"wamid.{digits()}")))
    await conversation(peers, foreign)
    got = await peers.mapper.GetChannelActivity(mpb.GetChannelActivityRequest(member_id=portal))
    by_id = {a.phone_number_id: a for a in got.channels}
    assert set(by_id) == {busy.phone_number_id, quiet.phone_number_id}  # never portal-b's number
    a = by_id[busy.phone_number_id]
    assert (a.conversations, a.open_windows) == (2, 1)
    assert a.last_inbound_at.ToDatetime(tzinfo=UTC) == now - timedelta(hours=1)
    assert a.HasField("last_outbound_at")
    assert abs(a.last_outbound_at.ToDatetime(tzinfo=UTC) - datetime.now(UTC)) < timedelta(minutes=1)
    q = by_id[quiet.phone_number_id]
    assert (
        q.conversations,
        q.open_windows,
        q.HasField("last_inbound_at"),
        q.HasField("last_outbound_at"),
    ) == (
        0,
        0,
        False,
        False,
    )
    one = mpb.GetChannelActivityRequest(member_id=portal, phone_number_ids=[quiet.phone_number_id])
    assert [c.phone_number_id for c in (await peers.mapper.GetChannelActivity(one)).channels] == [
        quiet.phone_number_id
    ]
    asked_for_foreign = mpb.GetChannelActivityRequest(
        member_id=portal, phone_number_ids=[foreign.phone_number_id]
    )
    assert not (await peers.mapper.GetChannelActivity(asked_for_foreign)).channels
    no_portal = peers.mapper.GetChannelActivity(mpb.GetChannelActivityRequest())
    assert await code_of(no_portal) == grpc.StatusCode.INVALID_ARGUMENT


async def test_unbind_removes_only_the_portals_own_unused_number(peers: Peers) -> None:
    portal = f"portal-{uuid.uuid4().hex[:8]}"
    free, used = await bound(peers, portal), await bound(peers, portal)
    await conversation(peers, used)
    unbind = peers.mapper.UnbindChannel
    other = mpb.UnbindChannelRequest(phone_number_id=free.phone_number_id, member_id="portal-b")
    assert await code_of(unbind(other)) == NOT_FOUND
    in_use = mpb.UnbindChannelRequest(phone_number_id=used.phone_number_id, member_id=portal)
    assert await code_of(unbind(in_use)) == grpc.StatusCode.FAILED_PRECONDITION
    removed = await unbind(mpb.UnbindChannelRequest(phone_number_id=free.phone_number_id, member_id=portal))
    assert removed.phone_number_id == free.phone_number_id and removed.member_id == portal
    gone = peers.mapper.GetChannel(mpb.GetChannelRequest(phone_number_id=free.phone_number_id))
    assert await code_of(gone) == NOT_FOUND
    assert (await peers.mapper.GetChannel(mpb.GetChannelRequest(phone_number_id=used.phone_number_id))).active
    assert await code_of(unbind(mpb.UnbindChannelRequest(phone_number_id=free.phone_number_id))) in (
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    # free again: another portal may bind it
    moved = mpb.Channel()
    moved.CopyFrom(free)
    moved.member_id = "portal-b"
    moved.ClearField("created_at")
    assert (await peers.mapper.BindChannel(mpb.BindChannelRequest(channel=moved))).member_id == "portal-b"


async def test_the_latest_customer_message_of_a_conversation_is_found(peers: Peers) -> None:
    conv = await conversation(peers, await bound(peers))
    find = peers.mapper.FindMessageLink
    latest = mpb.FindMessageLinkRequest(latest_customer_message_of=conv.id)
    assert await code_of(find(latest)) == NOT_FOUND
    for wamid in ("wamid.L1", "wamid.L2"):
        inbound = link_of(conv, wamid)
        inbound.direction = mpb.DIRECTION_INBOUND
        await peers.mapper.LinkMessage(mpb.LinkMessageRequest(link=inbound))
    await peers.mapper.LinkMessage(mpb.LinkMessageRequest(link=link_of(conv, "wamid.L3")))  # the operator's
    assert (await find(latest)).wamid == "wamid.L2"
    nobody = mpb.FindMessageLinkRequest(latest_customer_message_of=str(uuid.uuid4()))
    assert await code_of(find(nobody)) == NOT_FOUND


async def test_the_first_result_of_an_event_stays(peers: Peers) -> None:
    event_id = f"evt:{uuid.uuid4()}"
    check = mpb.CheckProcessedRequest(event_id=event_id)
    assert not (await peers.mapper.CheckProcessed(check)).processed
    mark = peers.mapper.MarkProcessed
    assert not (await mark(mpb.MarkProcessedRequest(event_id=event_id, result="wamid.1"))).already_processed
    assert (await mark(mpb.MarkProcessedRequest(event_id=event_id, result="wamid.2"))).already_processed
    got = await peers.mapper.CheckProcessed(check)
    assert (got.processed, got.result) == (True, "wamid.1")


async def test_an_uninstall_is_kept_until_a_later_install(peers: Peers) -> None:
    member = f"portal-{uuid.uuid4().hex[:8]}"
    t0 = datetime(2026, 11, 1, 12, tzinfo=UTC)
    set_ = peers.mapper.SetPortalInstalled
    first = await set_(mpb.SetPortalInstalledRequest(member_id=member, installed=False, at=ts(t0)))
    assert first.uninstalled_at.ToDatetime(tzinfo=UTC) == t0
    assert first.purge_after.ToDatetime(tzinfo=UTC) == t0 + timedelta(days=30)  # the default grace
    # A redelivered (later) uninstall keeps the first time; an install older than it changes nothing.
    again = await set_(
        mpb.SetPortalInstalledRequest(member_id=member, installed=False, at=ts(t0 + timedelta(hours=1)))
    )
    assert again.uninstalled_at.ToDatetime(tzinfo=UTC) == t0
    stale = await set_(
        mpb.SetPortalInstalledRequest(member_id=member, installed=True, at=ts(t0 - timedelta(hours=1)))
    )
    assert stale.HasField("uninstalled_at")
    back = await set_(
        mpb.SetPortalInstalledRequest(member_id=member, installed=True, at=ts(t0 + timedelta(days=2)))
    )
    assert not back.HasField("uninstalled_at") and not back.HasField("purge_after")
    assert (
        await code_of(set_(mpb.SetPortalInstalledRequest(installed=False)))
        == grpc.StatusCode.INVALID_ARGUMENT
    )


async def test_record_delivery_is_all_or_nothing_and_idempotent(peers: Peers) -> None:
    conv = await conversation(peers, await bound(peers))
    event_id = f"evt:{uuid.uuid4()}"
    now = datetime.now(UTC).replace(microsecond=0)

    def delivery(conversation_id: str) -> mpb.RecordDeliveryRequest:
        link = link_of(conv, f"wamid.{event_id}", "901")
        link.conversation_id = conversation_id
        return mpb.RecordDeliveryRequest(
            link=mpb.LinkMessageRequest(link=link),
            conversation=mpb.UpdateConversationRequest(
                id=conversation_id, bitrix_chat_id="55", last_message_at=ts(now)
            ),
            processed=mpb.MarkProcessedRequest(event_id=event_id, result="delivered"),
        )

    assert await code_of(peers.mapper.RecordDelivery(delivery(str(uuid.uuid4())))) == NOT_FOUND
    assert not (await peers.mapper.CheckProcessed(mpb.CheckProcessedRequest(event_id=event_id))).processed
    first = await peers.mapper.RecordDelivery(delivery(conv.id))
    assert not first.already_processed
    assert (first.link.wamid, first.conversation.bitrix_chat_id) == (f"wamid.{event_id}", "55")
    assert (await peers.mapper.RecordDelivery(delivery(conv.id))).already_processed


async def test_the_batched_rpcs_answer_per_item(peers: Peers) -> None:
    conv = await conversation(peers, await bound(peers))
    event_id = f"evt:{uuid.uuid4()}"
    now = datetime.now(UTC).replace(microsecond=0)

    def delivery(conversation_id: str, n: int) -> mpb.RecordDeliveryRequest:
        link = link_of(conv, f"wamid.{event_id}.{n}")
        link.conversation_id = conversation_id
        return mpb.RecordDeliveryRequest(
            link=mpb.LinkMessageRequest(link=link),
            conversation=mpb.UpdateConversationRequest(
                id=conversation_id, bitrix_chat_id="55", last_message_at=ts(now)
            ),
            processed=mpb.MarkProcessedRequest(event_id=f"{event_id}.{n}", result="delivered"),
        )

    items = [delivery(conv.id, 1), delivery(str(uuid.uuid4()), 2), delivery(conv.id, 3)]
    got = await peers.mapper.RecordDeliveries(mpb.RecordDeliveriesRequest(deliveries=items))
    assert [r.error_code for r in got.results] == [0, grpc.StatusCode.NOT_FOUND.value[0], 0]
    assert [r.response.already_processed for r in got.results] == [False, False, False]
    assert got.results[2].response.conversation.bitrix_chat_id == "55"
    ids = [f"{event_id}.{n}" for n in (1, 2, 3)]
    check = await peers.mapper.CheckProcessedMany(mpb.CheckProcessedManyRequest(event_ids=ids))
    assert [(c.processed, c.result) for c in check.results] == [
        (True, "delivered"),
        (False, ""),
        (True, "delivered"),
    ]
    wamids = [f"wamid.{event_id}.{n}" for n in (3, 2, 1)]
    links = await peers.mapper.FindMessageLinks(mpb.FindMessageLinksRequest(wamids=wamids))
    assert [x.wamid for x in links.links] == [wamids[0], wamids[2]]  # the unrecorded one left out
    assert all(x.conversation_id == conv.id and x.member_id == conv.member_id for x in links.links)
    u = mpb.UpdateMessageStatusRequest
    moved = await peers.mapper.UpdateMessageStatuses(
        mpb.UpdateMessageStatusesRequest(
            updates=[
                u(wamid=wamids[0], whatsapp_status="read"),
                u(wamid=wamids[0], whatsapp_status="sent"),
                u(wamid=wamids[1], whatsapp_status="sent"),
                u(
                    wamid=wamids[2],
                    bitrix_status="delivered",
                    processed=mpb.MarkProcessedRequest(event_id=f"{event_id}.status", result="delivery"),
                ),
            ]
        )
    )
    assert [(x.wamid, x.whatsapp_status) for x in moved.links[:2]] == [(wamids[0], "read")] * 2
    assert [(x.wamid, x.bitrix_status) for x in moved.links[2:]] == [(wamids[2], "delivered")]
    check = await peers.mapper.CheckProcessed(mpb.CheckProcessedRequest(event_id=f"{event_id}.status"))
    assert (check.processed, check.result) == (True, "delivery")


# --- token-keeper ----------------------------------------------------------------------------------


def portal(member_id: str, application_token: str = "app-token-1") -> tpb.UpsertPortalRequest:
    expires = ts(datetime.now(UTC) + timedelta(hours=1))
    return tpb.UpsertPortalRequest(
        member_id=member_id,
        domain="portal.example.com",
        client_endpoint="https://portal.example.com/rest/",
        server_endpoint="https://oauth.bitrix.info/rest/",
        client_id="local.app",
        client_secret="client-secret",
        access_token="access-1",
        refresh_token="refresh-1",
        access_expires_at=expires,
        application_token=application_token,
        scope="imopenlines,imconnector",
    )


async def test_an_unknown_portal_is_not_found_and_its_token_not_valid(peers: Peers) -> None:
    tk, member_id = peers.token_keeper, f"m-{uuid.uuid4().hex[:8]}"
    assert await code_of(tk.GetPortalStatus(tpb.GetPortalStatusRequest(member_id=member_id))) == NOT_FOUND
    assert await code_of(tk.GetAccessToken(tpb.GetAccessTokenRequest(member_id=member_id))) == NOT_FOUND
    verdict = await tk.VerifyApplicationToken(
        tpb.VerifyApplicationTokenRequest(member_id=member_id, application_token="x")
    )
    assert (verdict.known_portal, verdict.valid) == (False, False)


async def test_an_installed_portal_has_a_status_a_token_and_verifies_its_app_token(peers: Peers) -> None:
    tk, member_id = peers.token_keeper, f"m-{uuid.uuid4().hex[:8]}"
    stored = await tk.UpsertPortal(portal(member_id))
    status = await tk.GetPortalStatus(tpb.GetPortalStatusRequest(member_id=member_id))
    for s in (stored, status):
        assert (s.member_id, s.domain, s.client_endpoint, s.state) == (
            member_id,
            "portal.example.com",
            "https://portal.example.com/rest/",
            tpb.PORTAL_STATE_ACTIVE,
        )
    token = await tk.GetAccessToken(tpb.GetAccessTokenRequest(member_id=member_id))
    assert (token.access_token, token.client_endpoint) == ("access-1", "https://portal.example.com/rest/")
    assert member_id in [p.member_id for p in (await tk.ListPortals(tpb.ListPortalsRequest())).portals]
    verify = tk.VerifyApplicationToken
    good = await verify(
        tpb.VerifyApplicationTokenRequest(member_id=member_id, application_token="app-token-1")
    )
    bad = await verify(
        tpb.VerifyApplicationTokenRequest(member_id=member_id, application_token="app-token-2")
    )
    assert (good.known_portal, good.valid, bad.known_portal, bad.valid) == (True, True, True, False)
    # A re-install without an application token keeps the stored one.
    await tk.UpsertPortal(portal(member_id, application_token=""))
    kept = await verify(
        tpb.VerifyApplicationTokenRequest(member_id=member_id, application_token="app-token-1")
    )
    assert kept.valid


async def test_channel_credentials_are_kept_per_field_and_verify_tokens_checked(peers: Peers) -> None:
    tk, pnid = peers.token_keeper, digits()
    assert (
        await code_of(tk.GetChannelCredentials(tpb.GetChannelCredentialsRequest(phone_number_id=pnid)))
        == NOT_FOUND
    )
    verify_token = base64.urlsafe_b64encode(os.urandom(12)).decode()
    status = await tk.UpsertChannelCredentials(
        tpb.UpsertChannelCredentialsRequest(
            phone_number_id=pnid,
            access_token="wa-1",
            app_secret="secret-1",
            verify_token=verify_token,
            waba_id="42",
        )
    )
    assert (status.phone_number_id, status.has_access_token, status.has_app_secret) == (pnid, True, True)
    # Empty fields keep the stored secrets.
    await tk.UpsertChannelCredentials(
        tpb.UpsertChannelCredentialsRequest(phone_number_id=pnid, access_token="wa-2", waba_id="42")
    )
    creds = await tk.GetChannelCredentials(tpb.GetChannelCredentialsRequest(phone_number_id=pnid))
    assert (creds.access_token, creds.app_secret, creds.verify_token, creds.waba_id) == (
        "wa-2",
        "secret-1",
        verify_token,
        "42",
    )
    check = tk.CheckVerifyToken
    assert (await check(tpb.CheckVerifyTokenRequest(verify_token=verify_token))).valid
    assert not (await check(tpb.CheckVerifyTokenRequest(verify_token="not-" + verify_token))).valid


async def test_waba_app_secret_is_one_channels_of_that_waba(peers: Peers) -> None:
    """GetWabaAppSecret: the app secret of the WABA's lowest phone_number_id holding one; NOT_FOUND for a
    WABA with no such channel (none at all, or only channels without an app secret)."""
    tk, waba, other = peers.token_keeper, digits(), digits()

    async def waba_secret(waba_id: str) -> tpb.WabaAppSecret:
        return await tk.GetWabaAppSecret(tpb.GetWabaAppSecretRequest(waba_id=waba_id))

    assert await code_of(waba_secret(waba)) == NOT_FOUND
    low, high = sorted([digits(), digits()])
    upsert = tk.UpsertChannelCredentials
    await upsert(tpb.UpsertChannelCredentialsRequest(phone_number_id=low, access_token="wa", waba_id=waba))
    assert await code_of(waba_secret(waba)) == NOT_FOUND  # its only channel cannot sign
    await upsert(
        tpb.UpsertChannelCredentialsRequest(
            phone_number_id=high, access_token="wa", app_secret="secret-high", waba_id=waba
        )
    )
    await upsert(
        tpb.UpsertChannelCredentialsRequest(phone_number_id=digits(), app_secret="secret-o", waba_id=other)
    )
    got = await waba_secret(waba)
    assert (got.waba_id, got.phone_number_id, got.app_secret) == (waba, high, "secret-high")
    await upsert(
        tpb.UpsertChannelCredentialsRequest(phone_number_id=low, app_secret="secret-low", waba_id=waba)
    )
    got = await waba_secret(waba)
    assert (got.phone_number_id, got.app_secret) == (low, "secret-low")
    assert (await waba_secret(other)).app_secret == "secret-o"
