"""The dispatcher's per-batch mapper calls: known conversations (never another tenant's), one
CheckProcessedMany per batch and one RecordDeliveries per request, with the single calls' outcomes."""

from __future__ import annotations

import grpc
import pytest
from bitrix_ingress.dispatcher import bookkeeping
from bitrix_ingress.dispatcher.conversations import Conversations
from bitrix_ingress.dispatcher.sent_effects import SENT
from bitrix_ingress.formparse import as_list
from test_batch_delivery import Harness, customer, h  # noqa: F401  (h: the fixture)
from zaptrix.errors import TransientError
from zaptrix.v1 import mapper_pb2
from zaptrix_testing.fakes import Portal


def conversation(member_id: str, pnid: str, wa_id: str, conv_id: str) -> mapper_pb2.Conversation:
    return mapper_pb2.Conversation(
        id=conv_id, member_id=member_id, phone_number_id=pnid, wa_id=wa_id, external_chat_id=f"wa_{conv_id}"
    )


class StubDeps:
    """GetOrCreateConversation answers from a table; counts the calls."""

    def __init__(self, answers: dict[tuple[str, str], mapper_pb2.Conversation]) -> None:
        self.answers = answers
        self.calls = 0

    async def get_or_create_conversation(
        self, phone_number_id: str, wa_id: str, contact_name: str
    ) -> mapper_pb2.GetOrCreateConversationResponse:
        self.calls += 1
        return mapper_pb2.GetOrCreateConversationResponse(conversation=self.answers[(phone_number_id, wa_id)])


def channel(pnid: str, member_id: str) -> mapper_pb2.Channel:
    return mapper_pb2.Channel(phone_number_id=pnid, member_id=member_id, line_id=1, active=True)


async def test_an_entry_is_only_found_for_its_own_portal_channel_and_customer() -> None:
    a = conversation("portal-a", "100", "4917", "conv-a")
    deps = StubDeps({("100", "4917"): a})
    known = Conversations(deps, 100, 60.0)  # type: ignore[arg-type]
    assert (await known.get(channel("100", "portal-a"), "4917", "Anna")).id == "conv-a"
    assert (await known.get(channel("100", "portal-a"), "4917", "Anna")).id == "conv-a"
    assert deps.calls == 1  # the second message found it in memory
    # Another tenant's conversation put in by mistake under no matter which key is never handed out:
    # entries are keyed by the conversation's own portal, channel and customer.
    known.remember(conversation("portal-b", "100", "4917", "conv-b"))
    assert (await known.get(channel("100", "portal-a"), "4917", "Anna")).id == "conv-a"
    # The same customer of a channel of another portal is another key: asked from the mapper.
    deps.answers[("200", "4917")] = conversation("portal-b", "200", "4917", "conv-b2")
    assert (await known.get(channel("200", "portal-b"), "4917", "Anna")).id == "conv-b2"
    assert deps.calls == 2


async def test_a_conversation_of_another_portal_than_the_channel_is_refused_not_cached() -> None:
    """The process's channel binding is stale (the number moved to portal B): the mapper's conversation
    names B; the message must not go to A with it, and nothing is remembered."""
    deps = StubDeps({("100", "4917"): conversation("portal-b", "100", "4917", "conv-b")})
    known = Conversations(deps, 100, 60.0)  # type: ignore[arg-type]
    with pytest.raises(TransientError, match="portal-b"):
        await known.get(channel("100", "portal-a"), "4917", "Anna")
    assert len(known) == 0
    with pytest.raises(TransientError):
        await known.get(channel("100", "portal-a"), "4917", "Anna")
    assert deps.calls == 2


async def test_a_changed_conversation_replaces_the_entry_and_a_forgotten_one_is_asked_again() -> None:
    deps = StubDeps({("100", "4917"): conversation("portal-a", "100", "4917", "conv-a")})
    known = Conversations(deps, 100, 60.0)  # type: ignore[arg-type]
    await known.get(channel("100", "portal-a"), "4917", "Anna")
    changed = conversation("portal-a", "100", "4917", "conv-a")
    changed.bitrix_chat_id, changed.bitrix_contact_id = "1807", "55"
    known.remember(changed)
    got = await known.get(channel("100", "portal-a"), "4917", "Anna")
    assert (got.bitrix_chat_id, got.bitrix_contact_id) == ("1807", "55") and deps.calls == 1
    changed.bitrix_chat_id = "9999"  # the caller's object changing later does not change the entry
    assert (await known.get(channel("100", "portal-a"), "4917", "Anna")).bitrix_chat_id == "1807"
    known.forget(changed)
    assert (await known.get(channel("100", "portal-a"), "4917", "Anna")).bitrix_chat_id == ""
    assert deps.calls == 2


async def test_size_zero_turns_the_cache_off() -> None:
    deps = StubDeps({("100", "4917"): conversation("portal-a", "100", "4917", "conv-a")})
    known = Conversations(deps, 0, 60.0)  # type: ignore[arg-type]
    for _ in range(3):
        await known.get(channel("100", "portal-a"), "4917", "Anna")
    assert deps.calls == 3


async def test_same_customer_on_two_portals_each_gets_its_own_chat(h: Harness) -> None:  # noqa: F811
    h.fakes.token_keeper.add(Portal("m2", "apptok2", access_token="access-2"))
    h.fakes.mapper.bind("200", "m2", 9)
    h.bitrix.valid_tokens.add("access-2")
    portal_of = {"access-1": "m1", "access-2": "m2"}
    dispatcher = h.make()
    for n in range(3):
        outcomes = await dispatcher.handle([customer("4917", n), customer("4917", n, pnid="200")])
        assert [o.kind for o in outcomes] == ["ok", "ok"]
    conv_a = h.fakes.mapper.by_customer("100", "4917")
    conv_b = h.fakes.mapper.by_customer("200", "4917")
    assert conv_a is not None and conv_b is not None and conv_a.id != conv_b.id
    by_chat: dict[str, set[str]] = {}
    for call in h.bitrix.calls:
        if call.method == "imconnector.send.messages":
            for message in as_list(call.params.get("MESSAGES")):
                by_chat.setdefault(str(message["chat"]["id"]), set()).add(portal_of[call.token])
    assert by_chat == {conv_a.external_chat_id: {"m1"}, conv_b.external_chat_id: {"m2"}}
    assert h.fakes.mapper.count("GetOrCreateConversation") == 2  # once per portal's conversation


async def test_a_message_bitrix24_refused_makes_its_conversation_read_again(h: Harness) -> None:  # noqa: F811
    dispatcher = h.make()
    assert [o.kind for o in await dispatcher.handle([customer("4917", 1)])] == ["ok"]
    assert [o.kind for o in await dispatcher.handle([customer("4917", 2)])] == ["ok"]
    assert h.fakes.mapper.count("GetOrCreateConversation") == 1
    h.bitrix.per_message_failures.add("wamid.4917.3")  # SUCCESS=false for this message
    assert [o.kind for o in await dispatcher.handle([customer("4917", 3)])] == ["retry"]
    assert [o.kind for o in await dispatcher.handle([customer("4917", 4)])] == ["ok"]
    assert h.fakes.mapper.count("GetOrCreateConversation") == 2


async def test_check_processed_many_failing_falls_back_to_one_check_per_event(h: Harness) -> None:  # noqa: F811
    assert await h.run([customer("4917", 1)]) == ["ok"]
    h.fakes.mapper.fail["CheckProcessedMany"] = [grpc.StatusCode.UNAVAILABLE]
    assert await h.run([customer("4917", 1), customer("4917", 2)]) == ["duplicate", "ok"]
    assert h.fakes.mapper.count("CheckProcessed") == 2
    assert [m["message"]["id"] for m in h.bitrix.sent_messages()] == ["wamid.4917.1", "wamid.4917.2"]


async def test_record_deliveries_down_ends_like_record_delivery_down(
    h: Harness,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The whole RecordDeliveries fails past its in-place attempts: each message is marked processed
    alone (so a redelivery does not send it again) and retried with its "sent" effect."""
    monkeypatch.setattr(bookkeeping, "IN_PLACE_BUDGET_S", 0.2)
    h.fakes.mapper.fail["RecordDeliveries"] = [grpc.StatusCode.UNAVAILABLE] * 10_000
    records = [customer(f"c{i}", 1) for i in range(3)]
    outcomes = await h.make().handle(records)
    assert [o.kind for o in outcomes] == ["retry"] * 3
    assert all(SENT in r.effects for r in records)
    assert h.fakes.mapper.count("MarkProcessed") == 3
    assert sorted(h.fakes.mapper.processed) == ["wa:wamid.c0.1", "wa:wamid.c1.1", "wa:wamid.c2.1"]
    h.fakes.mapper.fail.clear()
    assert await h.run([customer(f"c{i}", 1) for i in range(3)]) == ["duplicate"] * 3
    assert len(h.bitrix.sent_messages()) == 3


async def test_a_mapper_without_the_batched_rpcs_still_gets_every_message_recorded(
    h: Harness,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mid-upgrade (a mapper older than the dispatcher): UNIMPLEMENTED for the batched RPCs means one
    CheckProcessed / RecordDelivery per message, not retries in place and a dead letter."""
    monkeypatch.setattr(bookkeeping, "IN_PLACE_BUDGET_S", 0.2)
    h.fakes.mapper.fail["CheckProcessedMany"] = [grpc.StatusCode.UNIMPLEMENTED] * 100
    h.fakes.mapper.fail["RecordDeliveries"] = [grpc.StatusCode.UNIMPLEMENTED] * 100
    assert await h.run([customer(f"c{i}", 1) for i in range(3)]) == ["ok"] * 3
    assert h.fakes.mapper.count("RecordDelivery") == 3 and h.fakes.mapper.count("CheckProcessed") == 3
    assert sorted(h.fakes.mapper.processed) == ["wa:wamid.c0.1", "wa:wamid.c1.1", "wa:wamid.c2.1"]
