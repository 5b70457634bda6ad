"""Contact Center's connector slider (the SETTING_CONNECTOR placement POST it makes) and the BX24 SDK
stand-in. The browser side is tested with the settings page (services/bitrix-ingress/tests/
test_settings_page_in_a_browser.py); here: what is posted, with whose token, and what the SDK offers."""

from __future__ import annotations

import html
import json
import re

import httpx

MEMBER = "sandbox-member-1"


def posted_fields(page: str) -> dict[str, str]:
    form = page[page.index('<form id="placement"') : page.index("</form>")]
    return {
        html.unescape(name): html.unescape(value)
        for name, value in re.findall(r'<input type="hidden" name="([^"]*)" value="([^"]*)">', form)
    }


async def test_the_slider_posts_the_placement_with_a_fresh_admin_token(bitrix: httpx.AsyncClient) -> None:
    r = await bitrix.get(
        f"/_sandbox/portals/{MEMBER}/connector-settings",
        params={"line": "1", "lang": "br", "handler": "https://gw.example/webhooks/bitrix24/settings"},
    )
    assert r.status_code == 200
    assert (
        'action="https://gw.example/webhooks/bitrix24/settings?DOMAIN=sandbox.bitrix24.com&amp;APP_SID='
        in r.text
    )
    fields = posted_fields(r.text)
    assert set(fields) >= {
        "DOMAIN", "PROTOCOL", "LANG", "APP_SID", "AUTH_ID", "AUTH_EXPIRES", "REFRESH_ID", "SERVER_ENDPOINT",
        "APPLICATION_TOKEN", "APPLICATION_SCOPE", "member_id", "status", "PLACEMENT", "PLACEMENT_OPTIONS",
    }  # fmt: skip
    assert (fields["PLACEMENT"], fields["member_id"], fields["LANG"]) == ("SETTING_CONNECTOR", MEMBER, "br")
    options = json.loads(fields["PLACEMENT_OPTIONS"])
    assert (options["CONNECTOR"], options["LINE"]) == ("zaptrix_whatsapp", "1")
    info = (await bitrix.get("/oauth/rest/app.info", params={"auth": fields["AUTH_ID"]})).json()["result"]
    assert info["client_id"] == "local.sandbox.app" and info["install"]["member_id"] == MEMBER
    profile = await bitrix.post("/rest/profile", data={"auth": fields["AUTH_ID"]})
    assert profile.json()["result"]["ADMIN"] is True


async def test_an_ordinary_user_and_a_forged_token(bitrix: httpx.AsyncClient) -> None:
    url = f"/_sandbox/portals/{MEMBER}/connector-settings"
    handler = {"handler": "https://gw.example/s"}
    user = posted_fields((await bitrix.get(url, params={"user": "2", **handler})).text)["AUTH_ID"]
    assert (await bitrix.post("/rest/profile", data={"auth": user})).json()["result"]["ADMIN"] is False
    forged = posted_fields((await bitrix.get(url, params={"forge": "1", **handler})).text)["AUTH_ID"]
    assert (await bitrix.get("/oauth/rest/app.info", params={"auth": forged})).status_code == 401


async def test_without_a_placement_handler_or_portal_there_is_no_slider(bitrix: httpx.AsyncClient) -> None:
    assert (await bitrix.get("/_sandbox/portals/nobody/connector-settings")).status_code == 404
    await bitrix.post("/_sandbox/portals", json={"member_id": "fresh-1", "domain": "fresh.bitrix24.com"})
    assert (await bitrix.get("/_sandbox/portals/fresh-1/connector-settings")).status_code == 404


async def test_the_sdk_stand_in_offers_the_documented_calls(bitrix: httpx.AsyncClient) -> None:
    r = await bitrix.get("/api/v1/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/javascript")
    for call in (
        "init:",
        "getAuth:",
        "placement:",
        "fitWindow:",
        "resizeWindow:",
        "closeApplication:",
        "getLang:",
    ):
        assert call in r.text
    assert '"getInitData"' in r.text and "postMessage" in r.text
