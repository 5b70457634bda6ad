"""The Bitrix24 stand-in's OAuth server (app.info, refresh per app) and portals added at run time; the Graph
stand-in's extra numbers."""

from __future__ import annotations

import httpx
from zaptrix_sandbox import formdata

from .conftest import GatewayStub

NEW = {
    "member_id": "runtime-portal-1",
    "domain": "runtime.bitrix24.com",
    "client_id": "local.sandbox.app",
    "client_secret": "sandbox-client-secret",
    "application_token": "runtime-app-token",
    "line_id": 7,
    "connector_id": "zaptrix_whatsapp",
}


async def oauth_app_info(bitrix: httpx.AsyncClient, token: str) -> httpx.Response:
    return await bitrix.get("/oauth/rest/app.info", params={"auth": token})


async def test_oauth_app_info_names_the_app_and_the_portal(bitrix: httpx.AsyncClient) -> None:
    portal = (await bitrix.get("/_sandbox/portals/sandbox-member-1")).json()
    resp = await oauth_app_info(bitrix, portal["access_token"])
    assert resp.status_code == 200, resp.text
    result = resp.json()["result"]
    assert result["client_id"] == "local.sandbox.app"
    install = result["install"]
    assert (install["member_id"], install["domain"]) == ("sandbox-member-1", "sandbox.bitrix24.com")
    assert install["client_endpoint"] == portal["client_endpoint"]


async def test_oauth_app_info_refuses_tokens_it_did_not_issue(bitrix: httpx.AsyncClient) -> None:
    resp = await oauth_app_info(bitrix, "made-up-token")
    assert resp.status_code == 401 and resp.json()["error"] == "invalid_token"
    assert (await bitrix.get("/oauth/rest/app.info")).status_code == 401


async def test_tokens_of_another_app_and_of_an_ordinary_user(bitrix: httpx.AsyncClient) -> None:
    other = (
        await bitrix.post("/_sandbox/portals/sandbox-member-1/tokens", json={"client_id": "local.other.app"})
    ).json()
    assert (await oauth_app_info(bitrix, other["access_token"])).json()["result"]["client_id"] == (
        "local.other.app"
    )
    # The other app's refresh token cannot be exchanged with our app's credentials.
    refused = await bitrix.get(
        "/oauth/token/",
        params={
            "grant_type": "refresh_token",
            "client_id": "local.sandbox.app",
            "client_secret": "sandbox-client-secret",
            "refresh_token": other["refresh_token"],
        },
    )
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"

    user = (await bitrix.post("/_sandbox/portals/sandbox-member-1/tokens", json={"user_id": 27})).json()
    assert user["admin"] is False
    profile = await bitrix.post("/rest/profile", json={"auth": user["access_token"]})
    assert profile.json()["result"]["ADMIN"] is False
    admin = await bitrix.post("/rest/user.admin", json={"auth": other["access_token"]})
    assert admin.json()["result"] is True  # user 1 of the portal, whichever app's token


async def test_minimal_app_info_leaves_the_portal_out(bitrix: httpx.AsyncClient) -> None:
    assert (await bitrix.post("/_sandbox/config", json={"oauth_app_info": "minimal"})).status_code == 200
    token = (await bitrix.get("/_sandbox/portals/sandbox-member-1")).json()["access_token"]
    result = (await oauth_app_info(bitrix, token)).json()["result"]
    assert result["client_id"] == "local.sandbox.app" and "install" not in result


async def test_a_portal_added_at_run_time_installs_through_the_gateway(
    bitrix: httpx.AsyncClient, stub: GatewayStub
) -> None:
    created = await bitrix.post("/_sandbox/portals", json=NEW)
    assert created.status_code == 201, created.text
    assert (await bitrix.post("/_sandbox/portals", json=NEW)).status_code == 409
    assert (await bitrix.post("/_sandbox/portals", json={"member_id": "x"})).status_code == 400
    portal = created.json()
    assert portal["connectors"] == {}  # not set up yet: the install does that

    resp = await bitrix.post(f"/_sandbox/portals/{NEW['member_id']}/install")
    assert resp.json()["status_code"] == 200
    [install] = stub.on("/webhooks/bitrix24/install")
    form = formdata.parse_query(install.body.decode())
    auth = form["auth"]
    assert (auth["member_id"], auth["application_token"]) == (NEW["member_id"], NEW["application_token"])
    info = (await oauth_app_info(bitrix, auth["access_token"])).json()["result"]
    assert info["install"]["member_id"] == NEW["member_id"]
    # Its tokens work on the shared REST endpoint, for this portal.
    reply = await bitrix.post("/rest/app.info", json={"auth": auth["access_token"]})
    assert reply.status_code == 200 and reply.json()["result"]["CODE"] == "local.sandbox.app"
    listed = (await bitrix.get("/_sandbox/portals")).json()["portals"]
    assert NEW["member_id"] in {p["member_id"] for p in listed}
    (await bitrix.post("/_sandbox/reset")).raise_for_status()
    assert (await bitrix.get(f"/_sandbox/portals/{NEW['member_id']}")).status_code == 404


async def test_graph_numbers_added_at_run_time(graph: httpx.AsyncClient, stub: GatewayStub) -> None:
    number = {
        "phone_number_id": "100000000000002",
        "display_phone_number": "15550000002",
        "access_token": "second-wa-token",
    }
    assert (await graph.post("/_sandbox/numbers", json=number)).status_code == 201
    assert (await graph.post("/_sandbox/numbers", json=number)).status_code == 409
    numbers = (await graph.get("/_sandbox/numbers")).json()["numbers"]
    assert {n["phone_number_id"] for n in numbers} >= {"100000000000001", "100000000000002"}
    sent = await graph.post(
        "/v21.0/100000000000002/messages",
        headers={"Authorization": "Bearer second-wa-token"},
        json={"messaging_product": "whatsapp", "to": "491700000001", "type": "text", "text": {"body": "hi"}},
    )
    assert sent.status_code == 200, sent.text
    resp = await graph.post(
        "/_sandbox/customers/491700000001/messages",
        json={"type": "text", "text": "hello", "phone_number_id": "100000000000002"},
    )
    assert resp.status_code == 200, resp.text
    values = [h.json()["entry"][0]["changes"][0]["value"] for h in stub.on("/webhooks/meta")]
    [inbound] = [v for v in values if v.get("messages")]
    assert inbound["metadata"]["phone_number_id"] == "100000000000002"
