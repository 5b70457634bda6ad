"""WhatsApp → Bitrix24 across the real system: every customer message reaches the operator, once, in order."""

from __future__ import annotations

from typing import Any

import pytest
from zaptrix_testing.seeding import SANDBOX_MEMBER_ID
from zaptrix_testing.waiting import eventually

from tests.e2e.flows import chat_messages, customer_says, external_chat_id, new_customer, wait_for_messages
from tests.system import System


async def contacts_with_phone(system: System, wa_id: str) -> list[dict[str, Any]]:
    resp = await system.bitrix.get(f"/_sandbox/portals/{SANDBOX_MEMBER_ID}/contacts")
    contacts = resp.json()["contacts"]
    return [c for c in contacts if any(wa_id in str(p.get("VALUE", "")) for p in c.get("PHONE", []))]


# One case per inbound type the Cloud API documents; `expect` is what the operator must be able to read.
CASES: list[tuple[str, dict[str, Any], str | None, bool]] = [
    ("text", {"type": "text", "text": "Guten Tag"}, "Guten Tag", False),
    ("image", {"type": "image", "media": {"caption": "Das Foto"}}, None, True),
    ("video", {"type": "video", "media": {"caption": "Clip"}}, None, True),
    ("voice", {"type": "audio", "media": {"voice": True}}, None, True),
    (
        "document",
        {"type": "document", "media": {"filename": "angebot.pdf", "caption": "Angebot"}},
        None,
        True,
    ),
    ("sticker", {"type": "sticker"}, None, True),
    (
        "location",
        {"type": "location", "location": {"latitude": 52.52, "longitude": 13.405, "name": "Büro"}},
        "52.52",
        False,
    ),
    (
        "contacts",
        {
            "type": "contacts",
            "contacts": [{"name": {"formatted_name": "Max Muster"}, "phones": [{"phone": "+49301234"}]}],
        },
        "Max Muster",
        False,
    ),
    (
        "button_reply",
        {"type": "interactive", "interactive": {"type": "button_reply", "id": "yes", "title": "Ja bitte"}},
        "Ja bitte",
        False,
    ),
    (
        "list_reply",
        {"type": "interactive", "interactive": {"type": "list_reply", "id": "r1", "title": "Termin Montag"}},
        "Termin Montag",
        False,
    ),
    ("button", {"type": "button", "button": {"payload": "STOP", "text": "Abmelden"}}, "Abmelden", False),
    ("unsupported", {"type": "unsupported", "unsupported": {"type": "poll"}}, "nsupported", False),
]


@pytest.mark.parametrize(("label", "spec", "expect", "has_file"), CASES, ids=[c[0] for c in CASES])
async def test_every_message_type_reaches_the_operator_readably(
    system: System, label: str, spec: dict[str, Any], expect: str | None, has_file: bool
) -> None:
    wa_id = new_customer()
    await customer_says(system, wa_id, name="Typ Test", **spec)
    [message] = await wait_for_messages(system, wa_id, 1)
    if expect is not None:
        assert expect in message["text"], message
    if has_file:
        assert message["files"], f"{label}: the operator must be able to open the file: {message}"
        # Bitrix24 downloads the file from meta-ingress's signed media proxy, which streams it from Meta.
        await eventually(
            lambda: _downloaded(system, wa_id), what=f"{label}: Bitrix24 stand-in downloaded the media file"
        )
    else:
        assert message["text"].strip(), message


async def _downloaded(system: System, wa_id: str) -> bool:
    messages = await chat_messages(system, wa_id)
    files = [f for m in messages for f in m["files"]]
    return bool(files) and all(f.get("download") == "ok" for f in files)


async def test_reaction_and_reply_context_are_readable(system: System) -> None:
    wa_id = new_customer()
    first = await customer_says(system, wa_id, type="text", text="Wann öffnen Sie?")
    await wait_for_messages(system, wa_id, 1)
    await customer_says(
        system, wa_id, type="text", text="Und am Samstag?", context={"message_id": first["wamid"]}
    )
    await customer_says(
        system, wa_id, type="reaction", reaction={"message_id": first["wamid"], "emoji": "👍"}
    )
    messages = await wait_for_messages(system, wa_id, 3)
    assert "Und am Samstag?" in messages[1]["text"]
    # No native reply exists in the connector API; the operator sees that it answers an earlier message.
    assert messages[1]["text"].index("Reply to") < messages[1]["text"].index("Und am Samstag?")
    assert "👍" in messages[2]["text"]


async def test_one_webhook_with_several_messages_delivers_each_in_order(system: System) -> None:
    a, b = new_customer(), new_customer()
    resp = await system.graph.post(
        "/_sandbox/webhooks",
        json={
            "layout": "entries",
            "messages": [
                {"wa_id": a, "type": "text", "text": "eins"},
                {"wa_id": b, "type": "text", "text": "hallo"},
                {"wa_id": a, "type": "text", "text": "zwei"},
                {"wa_id": a, "type": "text", "text": "drei"},
            ],
        },
    )
    assert resp.json()["gateway_status"] == 200
    assert [m["text"] for m in await wait_for_messages(system, a, 3)] == ["eins", "zwei", "drei"]
    assert [m["text"] for m in await wait_for_messages(system, b, 1)] == ["hallo"]


async def test_bad_signature_is_refused_and_nothing_is_delivered(system: System) -> None:
    wa_id = new_customer()
    for signature in ("invalid", "missing"):
        resp = await system.graph.post(
            f"/_sandbox/customers/{wa_id}/messages",
            json={"type": "text", "text": "forged", "signature": signature},
        )
        assert resp.json()["gateway_status"] == 401
    await customer_says(system, wa_id, type="text", text="echt")
    assert [m["text"] for m in await wait_for_messages(system, wa_id, 1)] == ["echt"]


async def test_malformed_webhook_is_a_400_not_a_500(system: System) -> None:
    for body in (b"{not json", b'{"object":"whatsapp_business_account","entry":"nope"}'):
        resp = await system.meta_web.post(
            "/webhooks/meta", content=body, headers={"X-Hub-Signature-256": "sha256=00"}
        )
        assert resp.status_code in (400, 401)
        assert resp.status_code != 500


async def test_a_replayed_webhook_does_not_post_twice(system: System) -> None:
    wa_id = new_customer()
    sent = await customer_says(system, wa_id, type="text", text="nur einmal")
    await wait_for_messages(system, wa_id, 1)
    for _ in range(3):  # Meta repeats webhooks; the identical bytes and signature come again
        again = await system.graph.post(f"/_sandbox/webhooks/{sent['delivery_id']}/replay")
        assert again.json()["gateway_status"] == 200
    await customer_says(system, wa_id, type="text", text="danach")
    messages = await wait_for_messages(system, wa_id, 2)
    assert [m["text"] for m in messages] == ["nur einmal", "danach"]
    assert all(m["duplicate_of"] is None for m in messages)


async def test_first_contact_creates_one_crm_contact_and_returning_customer_reuses_it(system: System) -> None:
    wa_id = new_customer()
    await customer_says(system, wa_id, type="text", text="erstes Mal", name="Erika Mustermann")
    await wait_for_messages(system, wa_id, 1)
    [contact] = await contacts_with_phone(system, wa_id)
    assert "Erika" in (contact.get("NAME", "") + contact.get("LAST_NAME", ""))
    await customer_says(system, wa_id, type="text", text="wieder da", name="Erika Mustermann")
    messages = await wait_for_messages(system, wa_id, 2)
    assert len(await contacts_with_phone(system, wa_id)) == 1, "never a duplicate contact"
    chats = {m.get("chat_id") for m in messages}
    assert len(chats) <= 1
    chat_id = await external_chat_id(system, wa_id)
    assert chat_id.startswith("wa_") and wa_id not in chat_id, "opaque, not derived from the phone number"


async def test_expired_bitrix_token_mid_flow_is_refreshed_and_the_message_delivered(system: System) -> None:
    wa_id = new_customer()
    await customer_says(system, wa_id, type="text", text="vorher")
    await wait_for_messages(system, wa_id, 1)
    before = (await system.bitrix.get(f"/_sandbox/portals/{SANDBOX_MEMBER_ID}/stats")).json()["stats"]
    await system.bitrix.post(f"/_sandbox/portals/{SANDBOX_MEMBER_ID}/expire-token")
    await customer_says(system, wa_id, type="text", text="nachher")
    assert [m["text"] for m in await wait_for_messages(system, wa_id, 2)] == ["vorher", "nachher"]
    after = (await system.bitrix.get(f"/_sandbox/portals/{SANDBOX_MEMBER_ID}/stats")).json()["stats"]
    assert after["refresh_count"] == before["refresh_count"] + 1, "exactly one refresh"
