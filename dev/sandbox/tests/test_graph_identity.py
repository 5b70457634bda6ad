"""2026 identity in the Graph stand-in: BSUID-only customers, identity-change system messages, sends with
"recipient", 131062 for an authentication template to a BSUID."""

from __future__ import annotations

from typing import Any

import httpx

from .conftest import GatewayStub

URL = "/v23.0/100000000000001/messages"
TOKEN = {"Authorization": "Bearer sandbox-wa-token"}
BSUID = "US.13491208655302741918"


def _value(hook: Any) -> dict[str, Any]:
    value: dict[str, Any] = hook.json()["entry"][0]["changes"][0]["value"]
    return value


async def test_a_bsuid_only_customer_message_has_no_phone_anywhere(
    graph: httpx.AsyncClient, stub: GatewayStub
) -> None:
    body = {"text": "hi", "user_id": BSUID, "username": "anna.s", "phone_hidden": True}
    r = await graph.post(f"/_sandbox/customers/{BSUID}/messages", json=body)
    assert r.status_code == 200
    value = _value((await stub.wait_for("/webhooks/meta", 1))[0])
    (contact,) = value["contacts"]
    (message,) = value["messages"]
    assert "wa_id" not in contact and contact["user_id"] == BSUID
    assert contact["profile"]["username"] == "anna.s"
    assert "from" not in message and message["from_user_id"] == BSUID


async def test_identity_change_system_messages_have_the_documented_shape(
    graph: httpx.AsyncClient, stub: GatewayStub
) -> None:
    body = {
        "type": "user_changed_number",
        "previous_user_id": BSUID,
        "user_id": "US.77",
        "new_wa_id": "491709999999",
    }
    r = await graph.post("/_sandbox/customers/491701234567/identity-change", json=body)
    assert r.status_code == 200
    value = _value((await stub.wait_for("/webhooks/meta", 1))[0])
    assert "contacts" not in value  # system messages carry no contacts array
    (message,) = value["messages"]
    assert message["type"] == "system" and message["from"] == "491701234567"
    system = message["system"]
    assert (system["type"], system["wa_id"], system["user_id"], system["previous_user_id"]) == (
        "user_changed_number",
        "491709999999",
        "US.77",
        BSUID,
    )
    bad = await graph.post("/_sandbox/customers/-/identity-change", json={"type": "user_changed_name"})
    assert bad.status_code == 400


async def test_sends_to_a_bsuid_use_recipient_and_statuses_carry_recipient_user_id(
    graph: httpx.AsyncClient, stub: GatewayStub
) -> None:
    await graph.post(
        f"/_sandbox/customers/{BSUID}/messages", json={"text": "hi", "user_id": BSUID, "phone_hidden": True}
    )
    text = {"messaging_product": "whatsapp", "type": "text", "text": {"body": "hello"}}
    ok = await graph.post(URL, json={**text, "recipient": BSUID}, headers=TOKEN)
    assert ok.status_code == 200, ok.text
    assert ok.json()["contacts"] == [{"input": BSUID, "user_id": BSUID}]
    hooks = await stub.wait_for("/webhooks/meta", 2)
    status = _value(hooks[1])["statuses"][0]
    assert status["recipient_user_id"] == BSUID and "recipient_id" not in status
    both = await graph.post(URL, json={**text, "recipient": BSUID, "to": "491701234567"}, headers=TOKEN)
    assert both.status_code == 400 and both.json()["error"]["code"] == 100
    in_to = await graph.post(URL, json={**text, "to": BSUID}, headers=TOKEN)  # a BSUID never goes in "to"
    assert in_to.status_code == 400
    junk = await graph.post(URL, json={**text, "recipient": "x; DROP"}, headers=TOKEN)
    assert junk.status_code == 400


async def test_an_authentication_template_to_a_bsuid_is_refused_with_131062(graph: httpx.AsyncClient) -> None:
    await graph.post(
        "/_sandbox/config",
        json={"templates": [{"name": "otp", "category": "authentication"}, {"name": "hello_world"}]},
    )
    await graph.post(
        f"/_sandbox/customers/{BSUID}/messages", json={"text": "hi", "user_id": BSUID, "phone_hidden": True}
    )
    template = {"messaging_product": "whatsapp", "recipient": BSUID, "type": "template"}
    otp = await graph.post(
        URL, json={**template, "template": {"name": "otp", "language": {"code": "en_US"}}}, headers=TOKEN
    )
    assert otp.status_code == 400 and otp.json()["error"]["code"] == 131062
    hello = {**template, "template": {"name": "hello_world", "language": {"code": "en_US"}}}
    assert (await graph.post(URL, json=hello, headers=TOKEN)).status_code == 200
