"""Webhook → events, one fixture per documented message type (shapes from whatsapp.md A2)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from meta_ingress.web.normalize import Normalized, WebhookShapeError, normalize, parse_envelope
from meta_support import PNID, msg, status, value, webhook
from zaptrix.v1 import events_pb2


def media_url(pnid: str, media_id: str, filename: str) -> str:
    return f"https://mi/media/{pnid}/{media_id}?fn={filename}"


def run(payload: Any) -> Normalized:
    return normalize(parse_envelope(payload), media_url)


def one(message: dict[str, Any], **value_kw: Any) -> events_pb2.CustomerMessage:
    result = run(webhook(value([message], **value_kw)))
    assert len(result.envelopes) == 1
    env = result.envelopes[0]
    assert env.event_id == f"wa:{message['id']}"
    assert env.conversation_key == f"{PNID}:{message['from']}"
    assert env.source == events_pb2.PLATFORM_WHATSAPP
    assert json.loads(env.customer_message.raw_json) == message
    return env.customer_message


def test_text() -> None:
    m = one(msg("text", {"body": "Hello"}))
    assert (m.type, m.text, m.wa_id, m.profile_name, m.wamid) == (
        "text",
        "Hello",
        "16505551234",
        "Ana",
        m.wamid,
    )
    assert (
        m.sent_at.seconds == 1749416383
        and m.phone_number_id == PNID
        and m.display_phone_number == "15550000001"
    )


@pytest.mark.parametrize("kind", ["image", "video", "document", "sticker"])
def test_media(kind: str) -> None:
    body = {"id": "1234", "mime_type": "image/jpeg", "sha256": "q83v", "caption": "cap"}
    if kind == "document":
        body["filename"] = "invoice.pdf"
    m = one(msg(kind, body))
    media = m.media[0]
    assert (media.media_id, media.kind, media.mime_type, media.sha256) == ("1234", kind, "image/jpeg", "q83v")
    assert media.url == media_url(PNID, "1234", media.filename)
    assert media.filename == ("invoice.pdf" if kind == "document" else f"{kind}-1234.jpg")
    assert m.text == "cap"


def test_audio_and_voice() -> None:
    voice = one(msg("audio", {"id": "77", "mime_type": "audio/ogg; codecs=opus", "voice": True}))
    assert voice.media[0].kind == "voice" and voice.media[0].filename == "voice-77.ogg" and voice.text == ""
    audio = one(msg("audio", {"id": "78", "mime_type": "audio/mpeg"}))
    assert audio.media[0].kind == "audio" and audio.media[0].filename.endswith(".mp3")


def test_location() -> None:
    m = one(
        msg("location", {"latitude": 52.52, "longitude": 13.405, "name": "Office", "address": "Main St 1"})
    )
    assert m.text == "📍 Location: Office, Main St 1 (52.52, 13.405) https://maps.google.com/?q=52.52,13.405"
    assert (m.location.latitude, m.location.longitude, m.location.name) == (52.52, 13.405, "Office")
    bare = one(msg("location", {"latitude": "1", "longitude": "2"}))
    assert bare.text == "📍 Location: (1, 2) https://maps.google.com/?q=1,2"


def test_contacts() -> None:
    card = {
        "name": {"formatted_name": "Max Mustermann", "first_name": "Max"},
        "phones": [{"phone": "+49 170 0000000", "type": "CELL", "wa_id": "491700000000"}],
        "emails": [{"email": "max@example.com", "type": "WORK"}],
        "org": {"company": "ACME", "title": "CTO"},
        "urls": [{"url": "https://acme.example"}],
    }
    m = one(msg("text", None, type="contacts", contacts=[card, {"name": {"first_name": "Eva"}}]))
    assert m.type == "contacts"
    assert m.text == (
        "👤 Contact: Max Mustermann\n📞 +49 170 0000000 (CELL, WhatsApp)\n✉️ max@example.com\n🏢 ACME, CTO\n"
        "🔗 https://acme.example\n\n👤 Contact: Eva"
    )


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"type": "button_reply", "button_reply": {"id": "yes", "title": "Yes, please"}}, "Yes, please"),
        (
            {"type": "list_reply", "list_reply": {"id": "r1", "title": "Red", "description": "warm"}},
            "Red (warm)",
        ),
        (
            {
                "type": "nfm_reply",
                "nfm_reply": {"name": "flow", "body": "Sent", "response_json": '{"size": "L", "qty": 2}'},
            },
            "📝 Form submitted: flow\n• size: L\n• qty: 2",
        ),
        (
            {"type": "call_permission_reply", "call_permission_reply": {}},
            "[Interactive reply: call_permission_reply]",
        ),
    ],
)
def test_interactive(body: dict[str, Any], text: str) -> None:
    assert one(msg("interactive", body)).text == text


def test_button_reaction_order_system_and_welcome() -> None:
    assert one(msg("button", {"payload": "STOP", "text": "Stop promotions"})).text == "Stop promotions"
    r = one(msg("reaction", {"message_id": "wamid.OUT", "emoji": "👍"}))
    assert (r.text, r.reaction_emoji, r.reaction_to_wamid) == (
        "Reacted 👍 to your message",
        "👍",
        "wamid.OUT",
    )
    assert one(msg("reaction", {"message_id": "wamid.OUT", "emoji": ""})).text.startswith(
        "Removed a reaction"
    )
    order = one(
        msg(
            "order",
            {
                "catalog_id": "C1",
                "text": "asap",
                "product_items": [
                    {"product_retailer_id": "SKU-1", "quantity": 2, "item_price": 9.5, "currency": "EUR"}
                ],
            },
        )
    )
    assert order.text == "🛒 Order: 1 item (catalog C1)\n• 2 x SKU-1 @ 9.5 EUR\nasap"
    system = one(msg("system", {"body": "User A changed from 1 to 2", "type": "user_changed_number"}))
    assert system.text == "User A changed from 1 to 2"
    assert one(msg("request_welcome")).text == "👋 The customer opened the chat"


def test_unsupported_and_unknown_types_are_never_dropped() -> None:
    errors = [
        {
            "code": 131051,
            "title": "Message type unknown",
            "message": "Message type unknown",
            "error_data": {"details": "Message type is currently not supported."},
        }
    ]
    m = one(msg("unsupported", {"type": "edit"}, errors=errors))
    assert m.text == (
        "[Unsupported message type: edit]\n⚠️ 131051: Message type unknown (Message type is currently not supported.)"
    )
    legacy = one(msg("unknown", None, errors=errors))
    assert legacy.text.startswith("[Unsupported message type: unknown]")
    future = one(msg("hologram", {"id": "1"}))
    assert future.text == "[Unsupported message type: hologram]"


def test_reply_forward_referral_and_product_context() -> None:
    m = one(msg("text", {"body": "this one"}, context={"from": "155", "id": "wamid.Q", "forwarded": True}))
    assert m.reply_to_wamid == "wamid.Q" and m.forwarded
    assert one(msg("text", {"body": "x"}, context={"frequently_forwarded": True})).forwarded
    ad = one(
        msg(
            "text",
            {"body": "Hi!"},
            referral={
                "source_url": "https://fb.me/ad",
                "source_type": "ad",
                "headline": "Sale",
                "body": "50% off",
            },
        )
    )
    assert ad.text == "Hi!\n\n📣 Came from an ad: Sale — 50% off https://fb.me/ad"
    product = one(
        msg(
            "text",
            {"body": "price?"},
            context={"id": "w", "referred_product": {"catalog_id": "C9", "product_retailer_id": "SKU-9"}},
        )
    )
    assert product.text == "price?\n🛍 Asked about product SKU-9 (catalog C9)"


def test_statuses_and_value_errors() -> None:
    failed = status(
        "wamid.A",
        "failed",
        errors=[
            {"code": 131026, "title": "Message undeliverable", "error_data": {"details": "not on WhatsApp"}}
        ],
    )
    payload = webhook(
        value(
            [],
            [status("wamid.A", "sent"), failed],
            errors=[{"code": 131000, "title": "Something went wrong"}],
        )
    )
    result = run(payload)
    assert [e.event_id for e in result.envelopes] == ["wa-status:wamid.A:sent", "wa-status:wamid.A:failed"]
    st = result.envelopes[1].whatsapp_status
    assert (st.wamid, st.status, st.wa_id, st.at.seconds) == ("wamid.A", "failed", "16505551234", 1749416400)
    assert (st.errors[0].code, st.errors[0].details) == (131026, "not on WhatsApp")
    assert result.envelopes[0].conversation_key == f"{PNID}:16505551234"
    assert result.system_errors == [(PNID, 131000, "Something went wrong", "")]


def test_failed_131047_status_also_becomes_window_closed() -> None:
    window = {"code": 131047, "title": "Re-engagement message"}
    payload = webhook(
        value(
            [],
            [
                status("wamid.W", "failed", errors=[window]),
                status("wamid.U", "failed", errors=[{"code": 131026, "title": "Message undeliverable"}]),
                status("wamid.S", "sent", errors=[window]),  # not a failure: no window event
                status("wamid.N", "failed", recipient="", errors=[window]),  # no customer to write to
            ],
        )
    )
    result = run(payload)
    assert [e.event_id for e in result.envelopes] == [
        "wa-status:wamid.W:failed",
        "wa-status:wamid.U:failed",
        "wa-status:wamid.S:sent",
        "wa-status:wamid.N:failed",
    ]
    (env,) = result.window_closed
    assert (env.event_id, env.conversation_key) == ("wa-window:wamid.W", f"{PNID}:16505551234")
    assert env.source == events_pb2.PLATFORM_WHATSAPP and env.WhichOneof("kind") == "window_closed"
    wc = env.window_closed
    assert (wc.phone_number_id, wc.wa_id, wc.wamid, wc.at.seconds) == (
        PNID,
        "16505551234",
        "wamid.W",
        1749416400,
    )
    assert env.occurred_at.seconds == 1749416400
    assert result.count == 5


def test_several_entries_changes_messages_and_bsuid() -> None:
    a, b = msg("text", {"body": "a"}), msg("text", {"body": "b"})
    c = msg("text", {"body": "c"}, frm="4911")
    payload = webhook(value([a, b]), value([c], [status("w", "read")]), entries=2)
    hook = parse_envelope(payload)
    assert hook.channels == [PNID]
    result = normalize(hook, media_url)
    assert [e.customer_message.text for e in result.envelopes[:3]] == ["a", "b", "c"]
    assert result.messages == 3 and result.statuses == 1
    # 2026: no wa_id, a business-scoped user id instead; a message without "from" names the one contact
    bsuid = {"id": "wamid.B", "timestamp": "1", "type": "text", "text": {"body": "hi"}}
    m = run(webhook(value([bsuid], contacts=[{"profile": {"username": "@ana"}, "user_id": "US.123"}])))
    assert m.envelopes[0].conversation_key == f"{PNID}:US.123"
    assert m.envelopes[0].customer_message.profile_name == "@ana"


def test_other_fields_are_ignored_not_refused() -> None:
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "1",
                "changes": [{"field": "phone_number_quality_update", "value": {"event": "FLAGGED"}}],
            }
        ],
    }
    hook = parse_envelope(payload)  # (template webhooks are read: test_template_webhooks.py)
    assert hook.channels == [] and hook.ignored_fields == ["phone_number_quality_update"]
    assert run({"object": "whatsapp_business_account", "entry": []}).envelopes == []


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ([], "body must be a JSON object"),
        ({"object": "page"}, "unexpected object"),
        ({"object": "whatsapp_business_account", "entry": {}}, "entry must be a JSON array"),
        ({"object": "whatsapp_business_account", "entry": [1]}, r"entry\[0\] must be"),
        (webhook({"metadata": {}}), "phone_number_id is missing"),
        (webhook(value([{"from": "1", "type": "text"}])), r"messages\[\].id is missing"),
        (webhook(value([{"id": "w", "type": "text"}], contacts=[])), "names no customer"),
        (webhook(value([msg("image", {"mime_type": "image/png"})])), r"image.id is missing"),
        (webhook(value([], [{"status": "read"}])), r"statuses\[\].id is missing"),
        (webhook({**value([]), "messages": {"id": 1}}), "value.messages must be a JSON array"),
        (webhook({**value([]), "messages": ["x"]}), r"value.messages\[0\] must be"),
        # the paths are formatted only on an error (docs/benchmarks.md): they still name the place
        (
            {"object": "whatsapp_business_account", "entry": [{"changes": [1]}]},
            r"entry\[0\].changes\[0\] must",
        ),
        (
            {"object": "whatsapp_business_account", "entry": [{}, {"changes": [{"field": "messages"}]}]},
            r"entry\[1\].changes\[0\].value must be",
        ),
        (webhook({"metadata": []}), r"entry\[0\].changes\[0\].value.metadata must be"),
        (webhook({"metadata": {"phone_number_id": " "}}), r"changes\[0\].value.metadata.phone_number_id is"),
        (webhook({"metadata": {"phone_number_id": "1" * 513}}), "phone_number_id is too long"),
        (webhook({**value([]), "contacts": [7]}), r"value.contacts\[0\] must be"),
    ],
)
def test_shape_errors(payload: Any, reason: str) -> None:
    with pytest.raises(WebhookShapeError, match=reason):
        run(payload)


def test_a_channel_id_is_read_as_before_on_the_fast_path() -> None:
    assert parse_envelope(webhook({"metadata": {"phone_number_id": " 123 "}})).channels == ["123"]
    assert parse_envelope(webhook({"metadata": {"phone_number_id": 123}})).channels == ["123"]
    ignored = {"field": "account_update", "value": {"no": "metadata"}}
    hook = parse_envelope({"object": "whatsapp_business_account", "entry": [{"changes": [ignored]}]})
    assert hook.ignored_fields == ["account_update"] and hook.changes == []


def test_raw_json_is_compact_and_keeps_what_orjson_cannot_write() -> None:
    text = msg("text", {"body": "grüß 👋"})
    huge = {**msg("text", {"body": "x"}), "n": 2**70}  # no 64-bit integer: the stdlib writes it
    out = run(webhook(value([text, {**huge, "id": "w2"}])))
    first, second = (e.customer_message.raw_json for e in out.envelopes)
    assert json.loads(first) == text and "grüß 👋" in first and ", " not in first
    assert json.loads(second)["n"] == 2**70


def _mutate(node: Any, rng: random.Random) -> Any:
    junk = [None, 0, -1, 2**70, 1.5, "", "x" * 600, [], {}, [1, "a"], {"a": None}, True]
    if isinstance(node, dict):
        out = {k: _mutate(v, rng) if rng.random() < 0.8 else rng.choice(junk) for k, v in node.items()}
        if rng.random() < 0.2 and out:
            out.pop(rng.choice(list(out)))
        return out
    if isinstance(node, list):
        return [_mutate(v, rng) for v in node]
    return rng.choice(junk) if rng.random() < 0.3 else node


def test_fuzz_only_shape_errors_escape() -> None:
    """Random damage to valid payloads of every type: a result or WebhookShapeError, nothing else."""
    messages = [
        msg("text", {"body": "x"}, context={"id": "w", "forwarded": True}),
        msg("image", {"id": "1", "mime_type": "image/png", "caption": "c", "file_size": 12}),
        msg("audio", {"id": "2", "voice": True}),
        msg("location", {"latitude": 1, "longitude": 2}),
        msg(
            "text",
            None,
            type="contacts",
            contacts=[{"name": {"formatted_name": "A"}, "phones": [{"phone": "1"}]}],
        ),
        msg("interactive", {"type": "nfm_reply", "nfm_reply": {"response_json": "{}"}}),
        msg("reaction", {"message_id": "w", "emoji": "x"}),
        msg("order", {"product_items": [{"quantity": 1}]}),
        msg("unsupported", {"type": "x"}, errors=[{"code": 1}], referral={"headline": "h"}),
    ]
    base = webhook(value(messages, [status("w", "failed", errors=[{"code": "5"}])], errors=[{"code": 2}]))
    rng = random.Random(1)
    outcomes = {"ok": 0, "shape": 0}
    for _ in range(3000):
        payload = _mutate(base, rng)
        try:
            result = run(payload)
        except WebhookShapeError:
            outcomes["shape"] += 1
            continue
        for env in result.envelopes:
            env.SerializeToString()  # every produced event is encodable
        outcomes["ok"] += 1
    assert outcomes["ok"] > 100 and outcomes["shape"] > 100


# --- caps and sizes (security review H4, webhook sizes) ------------------------------------------------------
def test_caps_on_entries_changes_items_and_numbers() -> None:
    from meta_ingress.web.normalize import WebhookTooLarge

    three = [value([msg("text", {"body": str(i)})]) for i in range(3)]
    assert len(parse_envelope(webhook(*three), max_updates=3).changes) == 3
    with pytest.raises(WebhookTooLarge, match="changes"):
        parse_envelope(webhook(*three), max_updates=2)
    with pytest.raises(WebhookTooLarge, match="entries"):
        parse_envelope(webhook(*three, entries=3), max_updates=2)
    many = value([msg("text", {"body": str(i)}) for i in range(3)], [status("w", "read")])
    with pytest.raises(WebhookTooLarge, match="messages and statuses"):
        parse_envelope(webhook(many), max_updates=3)
    numbers = [value([msg("text", {"body": "x"})], pnid=str(10**14 + i)) for i in range(4)]
    assert len(parse_envelope(webhook(*numbers), max_channels=4).channels) == 4
    with pytest.raises(WebhookTooLarge, match="phone numbers"):
        parse_envelope(webhook(*numbers), max_channels=3)


def test_an_event_too_large_for_one_record_is_cut_with_a_visible_marker() -> None:
    from meta_ingress.web.normalize import TRUNCATED, fit

    huge = msg("text", {"body": "é" * 600_000})
    env = run(webhook(value([huge]))).envelopes[0]
    assert fit(env, 256 * 1024)
    assert env.ByteSize() <= 256 * 1024
    cm = env.customer_message
    assert cm.text.startswith("éé") and cm.text.endswith(f"\n{TRUNCATED}")
    assert json.loads(cm.raw_json)["truncated"] is True
    assert env.event_id == f"wa:{huge['id']}" and cm.wamid == huge["id"]  # ids are never cut
    small = run(webhook(value([msg("text", {"body": "hi"})]))).envelopes[0]
    assert not fit(small, 256 * 1024) and small.customer_message.text == "hi"


def test_huge_unknown_payload_and_long_names_share_the_cut() -> None:
    from meta_ingress.web.normalize import TRUNCATED, fit

    m = msg("hologram", {"data": "z" * 900_000})
    contacts = [{"profile": {"name": "N" * 400_000}, "wa_id": m["from"]}]
    env = run(webhook(value([m], contacts=contacts))).envelopes[0]
    assert fit(env, 128 * 1024)
    assert env.ByteSize() <= 128 * 1024
    assert env.customer_message.profile_name.endswith(TRUNCATED)
    assert env.customer_message.text == "[Unsupported message type: hologram]"


def test_over_long_customer_ids_are_refused() -> None:
    with pytest.raises(WebhookShapeError, match="customer id is too long"):
        run(webhook(value([msg("text", {"body": "x"}, frm="1" * 600)], contacts=[])))
    with pytest.raises(WebhookShapeError, match="recipient id is too long"):
        run(webhook(value(statuses=[status("w", "read", recipient="1" * 600)])))


# --- customers as people: BSUID-only customers and identity changes (2026) -----------------------------

BSUID = "US.13491208655302741918"


def _hook(value: dict[str, object]) -> Normalized:
    body = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "WABA",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {"display_phone_number": "15550001111", "phone_number_id": "PNID"},
                            **value,
                        },
                    }
                ],
            }
        ],
    }
    return normalize(parse_envelope(body), media_url)


def test_a_bsuid_only_customer_is_keyed_by_the_bsuid_and_carries_the_username() -> None:
    out = _hook(
        {
            "contacts": [{"profile": {"username": "ana.s"}, "user_id": BSUID, "parent_user_id": "US.ENT.42"}],
            "messages": [
                {
                    "from_user_id": BSUID,
                    "id": "wamid.B1",
                    "timestamp": "1700000000",
                    "type": "text",
                    "text": {"body": "hi"},
                }
            ],
        }
    )
    env = out.envelopes[0]
    cm = env.customer_message
    assert env.conversation_key == f"PNID:{BSUID}"
    assert (cm.wa_id, cm.user_id, cm.parent_user_id, cm.username) == (BSUID, BSUID, "US.ENT.42", "ana.s")
    assert not cm.phone_known and cm.profile_name == "ana.s" and cm.text == "hi"


def test_a_customer_with_phone_and_bsuid_is_keyed_by_the_phone() -> None:
    out = _hook(
        {
            "contacts": [{"profile": {"name": "Ana"}, "wa_id": "5511987654321", "user_id": BSUID}],
            "messages": [
                {
                    "from": "5511987654321",
                    "id": "wamid.B2",
                    "timestamp": "1700000000",
                    "type": "text",
                    "text": {"body": "hi"},
                }
            ],
        }
    )
    cm = out.envelopes[0].customer_message
    assert out.envelopes[0].conversation_key == "PNID:5511987654321"
    assert (cm.wa_id, cm.user_id, cm.phone_known, cm.profile_name) == ("5511987654321", BSUID, True, "Ana")


def test_hostile_identity_fields_are_dropped_not_trusted() -> None:
    out = _hook(
        {
            "contacts": [
                {
                    "profile": {"username": "a b\x00" * 50},
                    "wa_id": "15550002222",
                    "user_id": "US." + "9" * 500,
                    "parent_user_id": ["x"],
                }
            ],
            "messages": [
                {
                    "from": "15550002222",
                    "from_user_id": {"x": 1},
                    "id": "wamid.B3",
                    "timestamp": "1700000000",
                    "type": "text",
                    "text": {"body": "hi"},
                }
            ],
        }
    )
    cm = out.envelopes[0].customer_message
    assert (cm.user_id, cm.parent_user_id, cm.username) == ("", "", "")
    assert cm.wa_id == "15550002222"


def test_a_status_to_a_bsuid_recipient_carries_recipient_user_id() -> None:
    out = _hook(
        {
            "statuses": [
                {
                    "id": "wamid.S1",
                    "status": "delivered",
                    "timestamp": "1700000000",
                    "recipient_user_id": BSUID,
                    "recipient_parent_user_id": "US.ENT.42",
                }
            ]
        }
    )
    st = out.envelopes[0].whatsapp_status
    assert (st.wa_id, st.user_id, st.parent_user_id) == (BSUID, BSUID, "US.ENT.42")
    assert out.envelopes[0].conversation_key == f"PNID:{BSUID}"


def test_identity_change_system_messages_become_identity_change_events() -> None:
    out = _hook(
        {
            "messages": [
                {
                    "from": "491701234567",
                    "id": "wamid.SYS1",
                    "timestamp": "1700000000",
                    "type": "system",
                    "system": {
                        "body": "User Ana changed from 491701234567 to 491709999999",
                        "type": "user_changed_number",
                        "wa_id": "491709999999",
                        "user_id": "US.777",
                        "previous_user_id": BSUID,
                    },
                },
                {
                    "from_user_id": "US.777",
                    "id": "wamid.SYS2",
                    "timestamp": "1700000001",
                    "type": "system",
                    "system": {
                        "body": "changed",
                        "type": "user_changed_user_id",
                        "user_id": "US.888",
                        "previous_user_id": "US.777",
                        "previous_parent_user_id": "US.ENT.1",
                        "parent_user_id": "US.ENT.2",
                    },
                },
            ]
        }
    )
    first, second = (e.customer_identity_change for e in out.envelopes)
    assert out.envelopes[0].event_id == "wa-identity:wamid.SYS1"
    assert out.envelopes[0].conversation_key == "PNID:491701234567"  # behind the person's earlier messages
    assert (first.previous_wa_id, first.previous_user_id, first.wa_id, first.user_id) == (
        "491701234567",
        BSUID,
        "491709999999",
        "US.777",
    )
    assert out.envelopes[1].conversation_key == "PNID:US.777"
    assert (second.wa_id, second.user_id, second.previous_parent_user_id, second.parent_user_id) == (
        "",
        "US.888",
        "US.ENT.1",
        "US.ENT.2",
    )


def test_an_identity_change_with_a_forged_new_number_is_shown_not_applied() -> None:
    out = _hook(
        {
            "messages": [
                {
                    "from": "491701234567",
                    "id": "wamid.SYS3",
                    "timestamp": "1700000000",
                    "type": "system",
                    "system": {"body": "x", "type": "user_changed_number", "wa_id": "49170; DROP"},
                }
            ]
        }
    )
    assert out.envelopes[0].WhichOneof("kind") == "customer_message"


def test_a_status_carries_its_pricing_object_into_the_event() -> None:
    """Per-message pricing (2025/2026 shape): billable, pricing_model, category, type travel to the ledger;
    values outside [a-z0-9_] or over 40 characters become "other" (they end as keys and metric labels)."""
    priced = status(
        "wamid.P",
        "delivered",
        pricing={
            "billable": False,
            "pricing_model": "PMP",
            "category": "service",
            "type": "free_customer_service",
        },
    )
    odd = status("wamid.Q", "delivered", pricing={"billable": "true", "category": "x" * 41, "type": "a b"})
    bare = status("wamid.R", "read", pricing="not an object")
    result = run(webhook(value([], [priced, odd, bare])))
    p, q, r = (e.whatsapp_status for e in result.envelopes)
    assert p.HasField("pricing")
    assert (p.pricing.billable, p.pricing.pricing_model, p.pricing.category, p.pricing.type) == (
        False,
        "PMP",
        "service",
        "free_customer_service",
    )
    assert (q.pricing.billable, q.pricing.pricing_model, q.pricing.category, q.pricing.type) == (
        True,
        "",
        "other",
        "other",
    )
    assert not r.HasField("pricing")
