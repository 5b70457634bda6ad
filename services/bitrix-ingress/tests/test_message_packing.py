"""Packing: MESSAGES[] items, chunking into calls, calls into (batch) requests, in conversation order."""

from __future__ import annotations

from bitrix_ingress.dispatcher import packing as dl
from bitrix_ingress.text import QUOTE_LINE
from zaptrix.v1 import events_pb2


def cm(**kw: object) -> events_pb2.CustomerMessage:
    base: dict[str, object] = {"phone_number_id": "100", "wa_id": "4917", "wamid": "wamid.1", "type": "text"}
    base.update(kw)
    msg = events_pb2.CustomerMessage(**base)  # type: ignore[arg-type]
    msg.sent_at.FromSeconds(1_700_000_000)
    return msg


def items(n: int, files_every: int = 0) -> list[dl.Item]:
    return [
        dl.Item(owner=i, payload={"n": i}, has_files=bool(files_every and i % files_every == 0))
        for i in range(n)
    ]


def test_chunk_respects_message_and_file_limits_in_order() -> None:
    calls = dl.chunk("imconnector.send.messages", {"LINE": 1}, items(120), max_messages=50, max_files=10)
    assert [len(c.items) for c in calls] == [50, 50, 20]
    assert [i.owner for c in calls for i in c.items] == list(range(120))
    calls = dl.chunk(
        "imconnector.send.messages", {"LINE": 1}, items(30, files_every=1), max_messages=50, max_files=10
    )
    assert [len(c.items) for c in calls] == [10, 10, 10]
    assert calls[0].params() == {"LINE": 1, "MESSAGES": [{"n": i} for i in range(10)]}


def test_pack_bounds_commands_and_messages() -> None:
    calls = dl.chunk("imconnector.send.messages", {}, items(300), max_messages=50, max_files=10)
    calls.append(dl.Call("im.message.add", {"MESSAGE": "x"}, [dl.Item("n", {})], messages=False))
    requests = dl.pack(calls, use_batch=True, max_commands=10, max_messages=100)
    assert [len(r) for r in requests] == [
        2,
        2,
        2,
        1,
    ]  # at most 100 messages per request; the notice is one more
    assert [c for r in requests for c in r] == calls
    assert dl.pack(calls, use_batch=False, max_commands=10, max_messages=100) == [[c] for c in calls]
    many = [dl.Call("imconnector.send.status.delivery", {}, [dl.Item(i, {})]) for i in range(25)]
    assert [len(r) for r in dl.pack(many, use_batch=True, max_commands=10, max_messages=100)] == [10, 10, 5]


def test_status_marks_have_their_own_budget_per_request() -> None:
    """A reply brings two marks (delivery, reading): counted against the message budget, 100 per request
    would cap a portal's receipts below its replies. With max_statuses they count apart."""
    delivery = dl.chunk(dl.STATUS_DELIVERY, {}, items(100), max_messages=50, max_files=50)
    reading = dl.chunk(dl.STATUS_READING, {}, items(100), max_messages=50, max_files=50)
    messages = dl.chunk(dl.SEND_MESSAGES, {}, items(100), max_messages=50, max_files=10)
    calls = messages + delivery + reading
    both = dl.pack(calls, use_batch=True, max_commands=10, max_messages=100, max_statuses=200)
    assert [len(r) for r in both] == [6]  # 100 messages and 200 marks in one request
    assert [c for r in both for c in r] == calls
    shared = dl.pack(calls, use_batch=True, max_commands=10, max_messages=100)
    assert [len(r) for r in shared] == [2, 2, 2]  # without: 100 of either kind per request
    capped = dl.pack(delivery + reading, use_batch=True, max_commands=10, max_messages=100, max_statuses=100)
    assert [len(r) for r in capped] == [2, 2]


def test_split_keeps_order() -> None:
    call = dl.Call("imconnector.send.messages", {}, items(5))
    a, b = call.split()
    assert [i.owner for i in a.items] == [0, 1] and [i.owner for i in b.items] == [2, 3, 4]


def test_customer_item() -> None:
    msg = cm(text="*hi* [b]", profile_name="Anna 🌸 Schmidt")
    msg.media.add(kind="image", mime_type="image/jpeg", url="https://gw/media/1?sig=x", media_id="m1")
    msg.media.add(kind="audio", mime_type="audio/ogg", url="", media_id="m2")
    item = dl.build_customer_item(
        msg,
        contact_name="Anna 🌸 Schmidt",
        external_chat_id="wa_100_4917",
        reply_label="Reply to their message",
    )
    assert item["user"] == {"id": "4917", "name": "Anna", "last_name": "Schmidt", "phone": "+4917"}
    assert item["chat"] == {"id": "wa_100_4917"}
    message = item["message"]
    assert message["id"] == "wamid.1" and message["date"] == 1_700_000_000
    assert message["files"] == [{"url": "https://gw/media/1?sig=x", "name": "image-m1.jpg"}]
    assert message["text"].startswith(
        f"{QUOTE_LINE}\nReply to their message\n{QUOTE_LINE}\n[b]hi[/b] [\u200bb]"
    )
    assert "(audio could not be fetched from WhatsApp)" in message["text"]


def test_text_fallbacks_never_leave_a_message_empty() -> None:
    assert dl.render_text(cm(type="reaction", reaction_emoji="👍")) == "Reacted 👍"
    loc = cm(type="location")
    loc.location.latitude, loc.location.longitude, loc.location.name = 52.5, 13.4, "Office"
    assert dl.render_text(loc) == "📍 Office\nhttps://maps.google.com/?q=52.5,13.4"
    assert dl.render_text(cm(type="unsupported")) == "[i](unsupported message)[/i]"
    assert dl.render_text(cm(text="fwd", forwarded=True)) == "[i]Forwarded[/i]\nfwd"


def test_status_and_notice_items() -> None:
    status = dl.build_status_item(
        bitrix_chat_id="1807", bitrix_message_id="86497", wamids=["wamid.X"], external_chat_id="c", at=5
    )
    assert status == {
        "im": {"chat_id": "1807", "message_id": "86497"},
        "message": {"id": ["wamid.X"], "date": 5},
        "chat": {"id": "c"},
    }
    notice = dl.build_notice_item(
        event_id="e1", wa_id="4917", contact_name="Anna", external_chat_id="c", body="Not delivered"
    )
    assert notice["message"]["id"] == dl.notice_id("e1") and notice["message"]["disable_crm"] == "Y"
    assert notice["message"]["text"].startswith("⚠️ Zaptrix: [i](a notice from Zaptrix, not written by")
    assert notice["message"]["text"].endswith("[/i] Not delivered")
    assert notice["user"]["name"] == "Anna"
