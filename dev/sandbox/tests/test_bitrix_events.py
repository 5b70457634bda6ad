"""Events the Bitrix24 stand-in posts to the gateway: operator messages, install, no retries; delivery marks."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qsl

import httpx
from zaptrix_sandbox import formdata

from .conftest import GatewayStub

PORTAL = "sandbox-member-1"
CHAT = "100000000000001:491701234567"


async def customer_chat(bitrix: httpx.AsyncClient) -> str:
    token = (await bitrix.get(f"/_sandbox/portals/{PORTAL}")).json()["access_token"]
    r = await bitrix.post(
        "/rest/imconnector.send.messages.json",
        json={
            "auth": token,
            "CONNECTOR": "zaptrix_whatsapp",
            "LINE": 1,
            "MESSAGES": [
                {
                    "user": {"id": "491701234567", "name": "Anna"},
                    "chat": {"id": CHAT},
                    "message": {"id": "wamid.in", "date": "1767225600", "text": "Hallo"},
                }
            ],
        },
    )
    return str(r.json()["result"]["DATA"]["RESULT"][0]["session"]["CHAT_ID"])


def pairs(raw: bytes) -> dict[str, str]:
    return dict(parse_qsl(raw.decode()))


async def test_operator_message_event_matches_the_documented_form(
    bitrix: httpx.AsyncClient, stub: GatewayStub
) -> None:
    chat_id = await customer_chat(bitrix)
    r = await bitrix.post(
        f"/_sandbox/portals/{PORTAL}/operator-messages",
        json={"chat_id": CHAT, "text": "Guten [i]Tag[/i]!", "operator": "Klaus Weber"},
    )
    assert r.status_code == 200 and r.json()["status_code"] == 200
    [event] = stub.on("/webhooks/bitrix24/outbound")
    assert event.headers["Content-Type"] == "application/x-www-form-urlencoded"
    form = pairs(event.body)
    assert form["event"] == "ONIMCONNECTORMESSAGEADD"
    assert form["data[CONNECTOR]"] == "zaptrix_whatsapp" and form["data[LINE]"] == "1"
    assert form["data[MESSAGES][0][im][chat_id]"] == chat_id
    assert form["data[MESSAGES][0][im][message_id]"] == str(r.json()["im"]["message_id"])
    assert form["data[MESSAGES][0][message][text]"] == "[b]Klaus Weber:[/b][br] Guten [i]Tag[/i]!"
    assert form["data[MESSAGES][0][chat][id]"] == CHAT
    assert form["auth[application_token]"] == "sandbox-app-token"
    assert form["auth[member_id]"] == PORTAL and form["auth[domain]"] == "sandbox.bitrix24.com"
    assert form["auth[client_endpoint]"].endswith("/rest/") and form["ts"].isdigit()
    # The event's access token is a working REST token of the operator.
    me = await bitrix.get("/rest/profile.json", params={"auth": form["auth[access_token]"]})
    assert me.json()["result"]["NAME"] == "Klaus"
    assert "auth[refresh_token]" not in form


async def test_event_variants(bitrix: httpx.AsyncClient, stub: GatewayStub) -> None:
    await customer_chat(bitrix)
    await bitrix.post(
        f"/_sandbox/portals/{PORTAL}/operator-messages",
        json={
            "chat_id": CHAT,
            "text": "a",
            "use_data_key": True,
            "omit_tokens": True,
            "wrong_application_token": True,
            "files": [{"name": "scan.pdf"}],
        },
    )
    form = pairs(stub.on("/webhooks/bitrix24/outbound")[0].body)
    assert (
        form["data[DATA][0][message][text]"].endswith("a") and "data[MESSAGES][0][message][text]" not in form
    )
    assert "auth[access_token]" not in form and form["auth[application_token]"] != "sandbox-app-token"
    link = form["data[DATA][0][message][files][0][link]"]
    assert form["data[DATA][0][message][files][0][type]"] == "file"
    download = await bitrix.get(link)
    assert download.status_code == 200 and download.content.startswith(b"%PDF")


async def test_events_are_not_retried(bitrix: httpx.AsyncClient, stub: GatewayStub) -> None:
    await customer_chat(bitrix)
    stub.statuses.append(500)
    r = await bitrix.post(
        f"/_sandbox/portals/{PORTAL}/operator-messages", json={"chat_id": CHAT, "text": "x"}
    )
    assert r.json()["status_code"] == 500
    await asyncio.sleep(0.3)
    assert len(stub.on("/webhooks/bitrix24/outbound")) == 1
    events = (await bitrix.get(f"/_sandbox/portals/{PORTAL}/events")).json()["events"]
    assert [e["status_code"] for e in events] == [500]


async def test_delivery_status_marks_the_operator_message(
    bitrix: httpx.AsyncClient, stub: GatewayStub
) -> None:
    chat_id = await customer_chat(bitrix)
    im = (
        await bitrix.post(
            f"/_sandbox/portals/{PORTAL}/operator-messages", json={"chat_id": CHAT, "text": "x"}
        )
    ).json()["im"]
    token = (await bitrix.get(f"/_sandbox/portals/{PORTAL}")).json()["access_token"]

    def status(ids: Any) -> dict[str, Any]:
        return {
            "auth": token,
            "CONNECTOR": "zaptrix_whatsapp",
            "LINE": "1",
            "MESSAGES": [{"im": im, "message": {"id": ids, "date": "1767225600"}, "chat": {"id": CHAT}}],
        }

    scalar = await bitrix.post("/rest/imconnector.send.status.delivery", json=status("wamid.out"))
    assert scalar.status_code == 400  # message.id must be an array
    r = await bitrix.post(
        "/rest/imconnector.send.status.delivery",
        content=formdata.encode(status(["wamid.out"])),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200 and r.json()["result"] == {"SUCCESS": True, "DATA": []}
    chat = (await bitrix.get(f"/_sandbox/portals/{PORTAL}/chats")).json()["chats"][0]
    assert chat["chat_id"] == int(chat_id)
    operator = chat["messages"][-1]
    assert operator["delivered"] and operator["read"] and operator["external_ids"] == ["wamid.out"]
    # Now the operator can edit it: the update event names the external id as an array.
    upd = await bitrix.post(
        f"/_sandbox/portals/{PORTAL}/operator-messages/{im['message_id']}/update", json={"text": "y"}
    )
    assert upd.json()["status_code"] == 200
    form = pairs(stub.on("/webhooks/bitrix24/outbound")[-1].body)
    assert form["event"] == "ONIMCONNECTORMESSAGEUPDATE"
    assert form["data[MESSAGES][0][message][id][0]"] == "wamid.out"


async def test_install_event_hands_over_working_tokens(bitrix: httpx.AsyncClient, stub: GatewayStub) -> None:
    r = await bitrix.post(f"/_sandbox/portals/{PORTAL}/install")
    assert r.json()["gateway_status"] == 200 == r.json()["status_code"]
    [event] = stub.on("/webhooks/bitrix24/install")
    form = pairs(event.body)
    assert form["event"] == "ONAPPINSTALL" and form["data[INSTALLED]"] == "Y"
    assert form["auth[application_token]"] == "sandbox-app-token" and form["auth[member_id]"] == PORTAL
    refresh = await bitrix.get(
        "/oauth/token/",
        params={
            "grant_type": "refresh_token",
            "client_id": "local.sandbox.app",
            "client_secret": "sandbox-client-secret",
            "refresh_token": form["auth[refresh_token]"],
        },
    )
    assert refresh.status_code == 200


async def test_no_chat_and_inactive_connector(bitrix: httpx.AsyncClient, stub: GatewayStub) -> None:
    r = await bitrix.post(
        f"/_sandbox/portals/{PORTAL}/operator-messages", json={"chat_id": "nobody", "text": "x"}
    )
    assert r.status_code == 404
    await customer_chat(bitrix)
    assert (await bitrix.post(f"/_sandbox/portals/{PORTAL}/status-delete")).json()["status_code"] == 200
    r = await bitrix.post(
        f"/_sandbox/portals/{PORTAL}/operator-messages", json={"chat_id": CHAT, "text": "x"}
    )
    assert r.status_code == 409
    [event] = stub.on("/webhooks/bitrix24/outbound")
    assert pairs(event.body)["event"] == "ONIMCONNECTORSTATUSDELETE"
