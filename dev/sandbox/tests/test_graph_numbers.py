"""GET /<phone_number_id> and GET /<waba_id>/subscribed_apps: what the number binding checks read."""

from __future__ import annotations

import httpx

TOKEN = {"Authorization": "Bearer sandbox-wa-token"}
NUMBER = "100000000000001"
WABA = "200000000000001"


async def test_the_numbers_token_reads_its_state(graph: httpx.AsyncClient) -> None:
    default = await graph.get(f"/v23.0/{NUMBER}", headers=TOKEN)
    assert default.status_code == 200
    assert default.json() == {
        "verified_name": "Zaptrix Sandbox",
        "code_verification_status": "VERIFIED",
        "display_phone_number": "15550000001",
        "quality_rating": "GREEN",
        "id": NUMBER,
    }
    fields = "quality_rating,messaging_limit_tier,whatsapp_business_manager_messaging_limit,throughput"
    asked = (await graph.get(f"/v23.0/{NUMBER}", params={"fields": fields}, headers=TOKEN)).json()
    assert asked["messaging_limit_tier"] == "TIER_1K" and asked["throughput"] == {"level": "STANDARD"}
    assert asked["whatsapp_business_manager_messaging_limit"] == "TIER_2K"
    unknown = await graph.get(f"/v23.0/{NUMBER}", params={"fields": "nonsense"}, headers=TOKEN)
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == 100


async def test_bad_tokens_are_refused_in_graphs_shape(graph: httpx.AsyncClient) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = await graph.get(f"/v23.0/{NUMBER}", headers=headers)
        assert r.status_code == 401
        err = r.json()["error"]
        assert err["code"] == 190 and err["type"] == "OAuthException" and err["fbtrace_id"]
    await graph.post(
        "/_sandbox/config",
        json={
            "channels": [
                {
                    "phone_number_id": NUMBER,
                    "display_phone_number": "15550000001",
                    "access_token": "sandbox-wa-token",
                },
                {
                    "phone_number_id": "100000000000009",
                    "display_phone_number": "15550000009",
                    "access_token": "t9",
                    "waba_id": "200000000000009",
                },
            ]
        },
    )
    # a valid token of another number: the object does not exist for it (100, subcode 33)
    other = await graph.get(f"/v23.0/{NUMBER}", headers={"Authorization": "Bearer t9"})
    assert other.status_code == 400 and other.json()["error"]["error_subcode"] == 33
    other_waba = await graph.get(f"/v23.0/{WABA}/subscribed_apps", headers={"Authorization": "Bearer t9"})
    assert other_waba.status_code == 400 and other_waba.json()["error"]["code"] == 100


async def test_subscribed_apps_lists_the_app_only_when_subscribed(graph: httpx.AsyncClient) -> None:
    r = await graph.get(f"/v23.0/{WABA}/subscribed_apps", headers=TOKEN)
    assert r.status_code == 200
    (app,) = r.json()["data"]
    assert app["whatsapp_business_api_data"]["id"] == "300000000000001"
    channel = {
        "phone_number_id": NUMBER,
        "display_phone_number": "15550000001",
        "access_token": "sandbox-wa-token",
        "app_subscribed": False,
    }
    await graph.post("/_sandbox/config", json={"channels": [channel]})
    assert (await graph.get(f"/v23.0/{WABA}/subscribed_apps", headers=TOKEN)).json() == {"data": []}
    expired = await graph.get(f"/v23.0/{WABA}/subscribed_apps", headers={"Authorization": "Bearer x"})
    assert expired.status_code == 401 and expired.json()["error"]["code"] == 190
