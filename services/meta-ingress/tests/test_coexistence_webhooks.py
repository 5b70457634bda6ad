"""smb_message_echoes and user_preferences webhooks → events (research-2026-12.md 1.6, 1.11), and the
hostile shapes they may come in."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meta_ingress.web.normalize import (
    Normalized,
    WebhookShapeError,
    WebhookTooLarge,
    normalize,
    parse_envelope,
)
from meta_support import DISPLAY, PNID, WABA

CUSTOMER = "16505551234"


def media_url(pnid: str, media_id: str, filename: str) -> str:
    return f"https://mi/media/{pnid}/{media_id}?fn={filename}"


def hook(field: str, **parts: Any) -> dict[str, Any]:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": DISPLAY, "phone_number_id": PNID},
        **parts,
    }
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": WABA, "changes": [{"field": field, "value": value}]}],
    }


def run(payload: Any, max_updates: int = 1000) -> Normalized:
    return normalize(parse_envelope(payload, max_updates), media_url)


def echo(**over: Any) -> dict[str, Any]:
    return {
        "from": DISPLAY,
        "to": CUSTOMER,
        "id": "wamid.ECHO1",
        "timestamp": "1749416383",
        "type": "text",
        "text": {"body": "Sent from the phone"},
    } | over


def pref(value: str = "stop", **over: Any) -> dict[str, Any]:
    return {
        "wa_id": CUSTOMER,
        "detail": "User requested to stop marketing messages",
        "category": "marketing_messages",
        "value": value,
        "timestamp": 1749416383,
    } | over


def test_an_echo_is_the_business_message_to_the_customer() -> None:
    result = run(hook("smb_message_echoes", message_echoes=[echo()]))
    assert (result.echoes, result.messages, len(result.envelopes)) == (1, 0, 1)
    env = result.envelopes[0]
    assert env.WhichOneof("kind") == "business_echo"
    assert env.event_id == "wa-echo:wamid.ECHO1"
    assert env.conversation_key == f"{PNID}:{CUSTOMER}"  # keyed by the customer, not the business number
    e = env.business_echo
    assert (e.wa_id, e.wamid, e.type, e.text, e.sent_at.seconds) == (
        CUSTOMER,
        "wamid.ECHO1",
        "text",
        "Sent from the phone",
        1749416383,
    )


def test_a_media_echo_is_named_not_attached() -> None:
    image = {"id": "777", "mime_type": "image/jpeg", "caption": "our menu"}
    e = run(
        hook("smb_message_echoes", message_echoes=[echo(type="image", image=image, text=None)])
    ).envelopes[0]
    assert e.business_echo.text == "📎 image: image-777.jpg\nour menu"


@pytest.mark.parametrize("value", ["stop", "resume", "STOP"])
def test_user_preferences_become_consent_changes(value: str) -> None:
    result = run(hook("user_preferences", contacts=[{"wa_id": CUSTOMER}], user_preferences=[pref(value)]))
    assert result.consents == 1
    env = result.envelopes[0]
    c = env.consent_change
    assert (c.wa_id, c.category, c.value, c.at.seconds) == (
        CUSTOMER,
        "marketing_messages",
        value.lower(),
        1749416383,
    )
    assert env.event_id == f"wa-consent:{PNID}:{CUSTOMER}:marketing_messages:1749416383:{value.lower()}"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (hook("smb_message_echoes", message_echoes=[echo(to=None)]), r"message_echoes\[\].to is missing"),
        (hook("smb_message_echoes", message_echoes=[echo(id=None)]), r"messages\[\].id is missing"),
        (hook("smb_message_echoes", message_echoes=[echo(to="9" * 600)]), "too long"),
        (hook("smb_message_echoes", message_echoes={"a": 1}), "must be a JSON array"),
        (hook("smb_message_echoes", message_echoes=["x"]), r"message_echoes\[0\] must be"),
        (hook("user_preferences", user_preferences=[pref("maybe")]), "stop or resume"),
        (hook("user_preferences", user_preferences=[pref(wa_id=None)]), r"wa_id is missing"),
        (hook("user_preferences", user_preferences=[pref(value={"x": 1})]), r"value is missing"),
        (hook("user_preferences", user_preferences=7), "must be a JSON array"),
    ],
)
def test_hostile_shapes_are_refused_with_a_reason(payload: dict[str, Any], reason: str) -> None:
    with pytest.raises(WebhookShapeError, match=reason):
        run(payload)


def test_items_of_the_new_fields_count_against_the_cap() -> None:
    many = [echo(id=f"wamid.{i}") for i in range(11)]
    with pytest.raises(WebhookTooLarge):
        run(hook("smb_message_echoes", message_echoes=many), max_updates=10)
    with pytest.raises(WebhookTooLarge):
        run(hook("user_preferences", user_preferences=[pref()] * 11), max_updates=10)
    assert run(hook("smb_message_echoes", message_echoes=many[:10]), max_updates=10).echoes == 10


def test_fields_not_read_yet_are_still_only_counted() -> None:
    parsed = parse_envelope(hook("account_update", event="X"))
    assert parsed.ignored_fields == ["account_update"] and parsed.changes == []


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(
    field=st.sampled_from(["smb_message_echoes", "user_preferences"]),
    items=st.lists(
        st.dictionaries(
            st.sampled_from(["to", "id", "wa_id", "value", "category", "type", "text", "timestamp"]),
            _json,
            max_size=8,
        ),
        max_size=4,
    ),
)
def test_fuzz_only_shape_errors_escape(field: str, items: list[dict[str, Any]]) -> None:
    key = "message_echoes" if field == "smb_message_echoes" else "user_preferences"
    try:
        run(hook(field, **{key: items}))
    except WebhookShapeError:
        pass


def _change(kind: str, body: dict[str, Any], **over: Any) -> dict[str, Any]:
    return {"from": CUSTOMER, "id": "wamid.CHG", "timestamp": "1749416400", "type": kind, kind: body} | over


def test_a_customer_edit_names_the_original_and_carries_the_new_text() -> None:
    edit = {
        "original_message_id": "wamid.ORIG",
        "message": {"type": "text", "text": {"body": "10 Uhr, nicht 9"}},
    }
    result = run(hook("messages", contacts=[{"wa_id": CUSTOMER}], messages=[_change("edit", edit)]))
    assert (result.changes, result.messages, result.types) == (1, 0, [])
    env = result.envelopes[0]
    c = env.customer_message_change
    assert env.event_id == "wa-edit:wamid.CHG" and env.conversation_key == f"{PNID}:{CUSTOMER}"
    assert (c.action, c.original_wamid, c.text, c.at.seconds) == (
        "edit",
        "wamid.ORIG",
        "10 Uhr, nicht 9",
        1749416400,
    )


def test_a_customer_revoke_names_the_original() -> None:
    revoke = _change("revoke", {"original_message_id": "wamid.ORIG"})
    c = run(hook("messages", messages=[revoke])).envelopes[0].customer_message_change
    assert (c.action, c.original_wamid, c.text, c.wa_id) == ("revoke", "wamid.ORIG", "", CUSTOMER)


def test_contact_sync_gives_the_name_of_a_phone_number() -> None:
    item = {
        "type": "contact",
        "contact": {"full_name": "Anna Schmidt", "first_name": "Anna", "phone_number": "+1 650-555-1234"},
        "action": "add",
        "metadata": {"timestamp": "1749416400"},
    }
    other = {"type": "something_new", "whatever": 1}  # an undocumented type is skipped, not refused
    result = run(hook("smb_app_state_sync", state_sync=[item, other]))
    assert result.contact_syncs == 1 and len(result.envelopes) == 1
    s = result.envelopes[0].contact_name_sync
    assert (s.wa_id, s.full_name, s.action) == (CUSTOMER, "Anna Schmidt", "add")
    assert result.envelopes[0].conversation_key == f"{PNID}:{CUSTOMER}"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (hook("messages", messages=[_change("edit", {"message": {}})]), "original_message_id is missing"),
        (hook("messages", messages=[_change("revoke", "x")]), "original_message_id is missing"),
        (
            hook("messages", messages=[_change("revoke", {"original_message_id": "w"}, id=None)]),
            "id is missing",
        ),
        (
            hook("messages", messages=[_change("revoke", {"original_message_id": "w"}, **{"from": None})]),
            "from",
        ),
        (
            hook("smb_app_state_sync", state_sync=[{"type": "contact", "contact": {"phone_number": "abc"}}]),
            "not a phone number",
        ),
        (
            hook(
                "smb_app_state_sync",
                state_sync=[{"type": "contact", "contact": {"phone_number": "1"}, "action": 3}],
            ),
            "add or remove",
        ),
        (hook("smb_app_state_sync", state_sync="x"), "must be a JSON array"),
    ],
)
def test_hostile_changes_and_syncs_are_refused_with_a_reason(payload: dict[str, Any], reason: str) -> None:
    with pytest.raises(WebhookShapeError, match=reason):
        run(payload)


def test_state_sync_items_count_against_the_cap() -> None:
    item = {"type": "contact", "contact": {"phone_number": "1"}, "action": "add"}
    with pytest.raises(WebhookTooLarge):
        run(hook("smb_app_state_sync", state_sync=[item] * 11), max_updates=10)
