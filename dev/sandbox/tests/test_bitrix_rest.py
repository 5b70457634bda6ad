"""imconnector.*, CRM, batch and event.* of the Bitrix24 stand-in."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from zaptrix_sandbox import formdata

PORTAL = "sandbox-member-1"


async def token_of(bitrix: httpx.AsyncClient, member_id: str = PORTAL) -> str:
    return str((await bitrix.get(f"/_sandbox/portals/{member_id}")).json()["access_token"])


def message(user: str, chat: str, mid: str, text: str = "Hallo", **user_extra: str) -> dict[str, Any]:
    return {
        "user": {"id": user, "name": "Anna", **user_extra},
        "message": {"id": mid, "date": "1767225600", "text": text},
        "chat": {"id": chat},
    }


async def send(
    bitrix: httpx.AsyncClient, messages: list[dict[str, Any]], line: str = "1", form: bool = True
) -> httpx.Response:
    params = {
        "auth": await token_of(bitrix),
        "CONNECTOR": "zaptrix_whatsapp",
        "LINE": line,
        "MESSAGES": messages,
    }
    if form:  # PHP-style nested keys, as SDKs send them
        return await bitrix.post(
            "/rest/imconnector.send.messages.json",
            content=formdata.encode(params),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    return await bitrix.post("/rest/imconnector.send.messages.json", json=params)


async def test_send_messages_creates_stable_chats(bitrix: httpx.AsyncClient) -> None:
    r = await send(
        bitrix,
        [
            message("491701", "pn:491701", "wamid.a"),
            message("491701", "pn:491701", "wamid.b"),
            message("491702", "pn:491702", "wamid.c"),
        ],
    )
    assert r.status_code == 200
    body = r.json()
    assert body["result"]["SUCCESS"] is True and "time" in body
    results = body["result"]["DATA"]["RESULT"]
    assert [x["SUCCESS"] for x in results] == [True] * 3
    assert results[0]["session"] == results[1]["session"]
    assert results[0]["session"]["CHAT_ID"] != results[2]["session"]["CHAT_ID"]
    assert results[0]["message"]["id"] == "wamid.a" and results[0]["chat"]["id"] == "pn:491701"
    again = (await send(bitrix, [message("491701", "pn:491701", "wamid.d")], form=False)).json()
    assert again["result"]["DATA"]["RESULT"][0]["session"] == results[0]["session"]
    chats = (await bitrix.get(f"/_sandbox/portals/{PORTAL}/chats")).json()["chats"]
    assert [len(c["messages"]) for c in chats] == [3, 1]
    assert chats[0]["chat_id"] == int(results[0]["session"]["CHAT_ID"])


async def test_duplicate_external_ids_are_flagged(bitrix: httpx.AsyncClient) -> None:
    await send(bitrix, [message("491701", "pn:491701", "wamid.a")])
    await send(bitrix, [message("491701", "pn:491701", "wamid.a")])
    assert (await bitrix.get(f"/_sandbox/portals/{PORTAL}/stats")).json()["stats"]["duplicate_messages"] == 1


def _drop(part: str) -> dict[str, Any]:
    m = message("1", "c1", "m1")
    del m[part]
    return m


INVALID = [
    ([_drop("chat")], "1", "ERROR_ARGUMENT"),
    ([_drop("user")], "1", "ERROR_ARGUMENT"),
    ([{"user": {"id": "1"}, "message": "text", "chat": {"id": "c"}}], "1", "ERROR_ARGUMENT"),
    ([message("", "c1", "m1")], "1", "ERROR_ARGUMENT"),
    ([message("1", "c1", "m1", name="R2-D2")], "1", "ERROR_ARGUMENT"),
    ([message("1", "c1", "m1", last_name="x" * 26)], "1", "ERROR_ARGUMENT"),
    ([message("1", "c1", "m1", text="")], "1", "ERROR_IMCONNECTOR_NOT_ALL_THE_REQUIRED_DATA"),
    (
        [{**message("1", "c1", "m1"), "message": {"id": "m1", "date": "1767225600000", "text": "x"}}],
        "1",
        "ERROR_ARGUMENT",
    ),
    (
        [
            {
                **message("1", "c1", "m1"),
                "message": {"id": "m1", "date": "1767225600", "files": [{"name": "a"}]},
            }
        ],
        "1",
        "ERROR_ARGUMENT",
    ),
    ([message("1", "c1", "m1")], "2", "NOT_ACTIVE_LINE"),
]


@pytest.mark.parametrize(("messages", "line", "code"), INVALID)
async def test_send_messages_validation(
    bitrix: httpx.AsyncClient, messages: list[dict[str, Any]], line: str, code: str
) -> None:
    r = await send(bitrix, messages, line=line)
    assert r.status_code == 400 and r.json()["error"] == code
    assert (await bitrix.get(f"/_sandbox/portals/{PORTAL}/chats")).json()["chats"] == []


async def test_names_accept_letters_spaces_hyphens_apostrophes(bitrix: httpx.AsyncClient) -> None:
    r = await send(bitrix, [message("1", "c1", "m1", name="Zoë-Anne", last_name="O'Neil de la Cruz")])
    assert r.status_code == 200


async def test_files_are_downloaded_from_their_url(bitrix: httpx.AsyncClient, stub: Any) -> None:
    stub.files["/media/a.png"] = (200, "image/png", b"\x89PNG")
    m = {
        **message("1", "c1", "m1"),
        "message": {
            "id": "m1",
            "date": "1767225600",
            "files": [
                {"url": f"{stub.url}/media/a.png", "name": "a.png"},
                {"url": f"{stub.url}/media/gone.png", "name": "b"},
            ],
        },
    }
    assert (await send(bitrix, [m])).status_code == 200
    for _ in range(50):
        files = (await bitrix.get(f"/_sandbox/portals/{PORTAL}/chats")).json()["chats"][0]["messages"][0][
            "files"
        ]
        if all(f["download"] != "pending" for f in files):
            break
        await asyncio.sleep(0.02)
    assert [f["download"] for f in files] == ["ok", "failed"]


async def test_connector_lifecycle_on_a_fresh_portal(bitrix: httpx.AsyncClient) -> None:
    token = await token_of(bitrix, "sandbox-member-2")

    async def call(name: str, **params: Any) -> httpx.Response:
        return await bitrix.post(f"/rest/{name}.json", json={"auth": token, **params})

    r = await send_to(bitrix, token)
    assert r.json()["error"] == "NOT_ACTIVE_LINE"
    icon = {"DATA_IMAGE": "data:image/svg+xml;charset=US-ASCII,%3Csvg%3E%3C/svg%3E"}
    dotted = await call(
        "imconnector.register", ID="my.connector", NAME="WA", ICON=icon, PLACEMENT_HANDLER="https://x"
    )
    assert dotted.status_code == 200 and dotted.json()["result"] == {"result": False}
    assert dotted.json()["error"] == "APPLICATION_REGISTRATION_ERROR_POINT"
    r = await call(
        "imconnector.register", ID="Zaptrix_WhatsApp", NAME="WA", ICON=icon, PLACEMENT_HANDLER="https://x"
    )
    assert r.json()["result"] == {"result": True}
    assert (await call("imconnector.activate", CONNECTOR="zaptrix_whatsapp", LINE=1, ACTIVE=1)).json()[
        "result"
    ] is True
    status = (await call("imconnector.status", CONNECTOR="zaptrix_whatsapp", LINE=1)).json()["result"]
    assert status["STATUS"] is True and status["CONFIGURED"] is False
    await call(
        "imconnector.connector.data.set", CONNECTOR="zaptrix_whatsapp", LINE=1, DATA={"ID": "wa_line1"}
    )
    status = (await call("imconnector.status", CONNECTOR="zaptrix_whatsapp", LINE=1)).json()["result"]
    assert status["CONFIGURED"] is True
    assert (await send_to(bitrix, token)).status_code == 200
    await call("imconnector.activate", CONNECTOR="zaptrix_whatsapp", LINE=1, ACTIVE="N")
    assert (await send_to(bitrix, token)).json()["error"] == "NOT_ACTIVE_LINE"


async def send_to(bitrix: httpx.AsyncClient, token: str) -> httpx.Response:
    return await bitrix.post(
        "/rest/imconnector.send.messages",
        json={
            "auth": token,
            "CONNECTOR": "zaptrix_whatsapp",
            "LINE": 1,
            "MESSAGES": [message("1", "c1", "m1")],
        },
    )


async def test_crm_find_then_add_contact(bitrix: httpx.AsyncClient) -> None:
    token = await token_of(bitrix)
    find = {"auth": token, "entity_type": "CONTACT", "type": "PHONE", "values": ["+49 170 1234567"]}
    assert (await bitrix.post("/rest/crm.duplicate.findbycomm", json=find)).json()["result"] == []
    add = await bitrix.post(
        "/rest/crm.contact.add",
        content=formdata.encode(
            {
                "auth": token,
                "FIELDS": {"NAME": "Anna", "PHONE": [{"VALUE": "+491701234567", "VALUE_TYPE": "MOBILE"}]},
            }
        ),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    contact_id = add.json()["result"]
    assert isinstance(contact_id, int)
    found = await bitrix.post("/rest/crm.duplicate.findbycomm", json=find)
    assert found.json()["result"] == {"CONTACT": [contact_id]}
    listed = await bitrix.post(
        "/rest/crm.contact.list",
        json={"auth": token, "filter": {"PHONE": "491701234567"}, "select": ["ID", "NAME", "PHONE"]},
    )
    assert listed.json()["total"] == 1 and listed.json()["result"][0]["PHONE"][0]["VALUE_TYPE"] == "MOBILE"
    got = await bitrix.get("/rest/crm.contact.get", params={"auth": token, "ID": contact_id})
    assert got.json()["result"]["NAME"] == "Anna"
    bad = await bitrix.post(
        "/rest/crm.contact.add",
        json={"auth": token, "FIELDS": {"PHONE": [{"VALUE": "1", "VALUE_TYPE": "SATELLITE"}]}},
    )
    assert bad.status_code == 400
    too_many = await bitrix.post(
        "/rest/crm.duplicate.findbycomm", json={**find, "values": [str(i) for i in range(21)]}
    )
    assert too_many.status_code == 400


async def test_batch_limits_chaining_and_errors(bitrix: httpx.AsyncClient) -> None:
    token = await token_of(bitrix)
    r = await bitrix.post("/rest/batch", json={"auth": token, "cmd": {f"c{i}": "profile" for i in range(51)}})
    assert r.status_code == 400 and r.json()["error"] == "ERROR_BATCH_LENGTH_EXCEEDED"
    r = await bitrix.post(
        "/rest/batch",
        json={
            "auth": token,
            "halt": 0,
            "cmd": {
                "add": "crm.contact.add?fields[NAME]=Bob&fields[PHONE][0][VALUE]=4917099",
                "get": "crm.contact.get?id=$result[add]",
                "bad": "no.such.method",
                "nested": "batch?cmd[x]=profile",
            },
        },
    )
    assert r.status_code == 200
    result = r.json()["result"]
    assert result["result"]["get"]["NAME"] == "Bob"
    assert result["result_error"]["bad"]["error"] == "ERROR_METHOD_NOT_FOUND"
    assert result["result_error"]["nested"]["error"] == "ERROR_BATCH_METHOD_NOT_ALLOWED"
    clean = (await bitrix.post("/rest/batch", json={"auth": token, "cmd": ["profile"]})).json()["result"]
    assert clean["result_error"] == []  # PHP's empty array


async def test_event_bind_get_unbind(bitrix: httpx.AsyncClient) -> None:
    token = await token_of(bitrix)
    bind = {"auth": token, "event": "OnImConnectorMessageAdd", "handler": "https://gw/outbound"}
    assert (await bitrix.post("/rest/event.bind", json=bind)).json()["result"] is True
    assert (await bitrix.post("/rest/event.bind", json=bind)).status_code == 400
    unknown = await bitrix.post("/rest/event.bind", json={**bind, "event": "OnSomethingElse"})
    assert unknown.json()["error"] == "ERROR_EVENT_NOT_FOUND"
    events = (await bitrix.get("/rest/event.get", params={"auth": token})).json()["result"]
    assert events == [
        {"event": "ONIMCONNECTORMESSAGEADD", "handler": "https://gw/outbound", "auth_type": "0", "offline": 0}
    ]
    assert (await bitrix.post("/rest/event.unbind", json=bind)).json()["result"] == {"count": 1}


async def test_unknown_method_and_scope(bitrix: httpx.AsyncClient) -> None:
    r = await bitrix.get("/rest/im.nothing.json", params={"auth": await token_of(bitrix)})
    assert r.status_code == 404 and r.json()["error"] == "ERROR_METHOD_NOT_FOUND"
