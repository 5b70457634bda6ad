"""OAuth rotation, token expiry and the per-portal leaky bucket of the Bitrix24 stand-in."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

PORTAL = "sandbox-member-1"
CLIENT = {"client_id": "local.sandbox.app", "client_secret": "sandbox-client-secret"}


async def portal(bitrix: httpx.AsyncClient, member_id: str = PORTAL) -> dict[str, Any]:
    data: dict[str, Any] = (await bitrix.get(f"/_sandbox/portals/{member_id}")).json()
    return data


async def stats(bitrix: httpx.AsyncClient) -> dict[str, Any]:
    data: dict[str, Any] = (await bitrix.get(f"/_sandbox/portals/{PORTAL}/stats")).json()["stats"]
    return data


async def refresh(bitrix: httpx.AsyncClient, token: str, **override: str) -> httpx.Response:
    params = {"grant_type": "refresh_token", **CLIENT, "refresh_token": token, **override}
    return await bitrix.get("/oauth/token/", params=params)


async def test_refresh_rotates_tokens(bitrix: httpx.AsyncClient) -> None:
    before = await portal(bitrix)
    r = await refresh(bitrix, before["refresh_token"])
    assert r.status_code == 200
    body = r.json()
    assert set(body) >= {
        "access_token",
        "expires",
        "expires_in",
        "scope",
        "domain",
        "server_endpoint",
        "client_endpoint",
        "member_id",
        "user_id",
        "refresh_token",
        "status",
    }
    assert body["member_id"] == PORTAL and body["expires_in"] == 3600
    assert body["refresh_token"] != before["refresh_token"] and body["access_token"] != before["access_token"]
    assert body["client_endpoint"].endswith("/rest/")
    again = await refresh(bitrix, before["refresh_token"])  # the old refresh token was used up
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    # The previous access token stays valid until it expires (setting revoke_access_on_refresh).
    assert (
        await bitrix.get("/rest/profile.json", params={"auth": before["access_token"]})
    ).status_code == 200
    new = await bitrix.post(
        "/oauth/token/",
        data={"grant_type": "refresh_token", **CLIENT, "refresh_token": body["refresh_token"]},
    )
    assert new.status_code == 200
    assert (await stats(bitrix))["refresh_count"] == 2


async def test_wrong_client_secret_and_missing_params(bitrix: httpx.AsyncClient) -> None:
    token = (await portal(bitrix))["refresh_token"]
    r = await refresh(bitrix, token, client_secret="nope")
    assert r.json()["error"] == "invalid_client"
    r = await bitrix.get("/oauth/token/", params={"grant_type": "refresh_token", "refresh_token": token})
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    assert (await refresh(bitrix, token)).status_code == 200  # the failed attempts did not use it up
    assert (await stats(bitrix))["refresh_count"] == 1


async def test_revoke_on_refresh_setting(bitrix: httpx.AsyncClient) -> None:
    await bitrix.post("/_sandbox/config", json={"revoke_access_on_refresh": True})
    before = await portal(bitrix)
    assert (await refresh(bitrix, before["refresh_token"])).status_code == 200
    r = await bitrix.get("/rest/profile.json", params={"auth": before["access_token"]})
    assert r.status_code == 401


async def test_expired_unknown_and_missing_tokens(bitrix: httpx.AsyncClient) -> None:
    info = await portal(bitrix)
    assert (await bitrix.post(f"/_sandbox/portals/{PORTAL}/expire-token")).json()["expired"] >= 1
    r = await bitrix.post("/rest/profile", data={"auth": info["access_token"]})
    assert r.status_code == 401
    assert r.json() == {
        "error": "expired_token",
        "error_description": "The access token provided has expired.",
    }
    r = await bitrix.get("/rest/profile.json", params={"auth": "not-a-token"})
    assert r.status_code == 401 and r.json()["error"] == "invalid_token"
    r = await bitrix.get("/rest/profile.json")
    assert r.status_code == 401 and r.json()["error"] == "NO_AUTH_FOUND"
    fresh = (await refresh(bitrix, info["refresh_token"])).json()
    ok = await bitrix.get("/rest/profile.json", params={"auth": fresh["access_token"]})
    assert ok.status_code == 200 and ok.json()["result"]["ID"] == "1"
    assert set(ok.json()["time"]) >= {
        "start",
        "finish",
        "duration",
        "processing",
        "date_start",
        "date_finish",
    }


async def test_expired_refresh_token(bitrix: httpx.AsyncClient) -> None:
    token = (await portal(bitrix))["refresh_token"]
    await bitrix.post(f"/_sandbox/portals/{PORTAL}/expire-refresh-token")
    assert (await refresh(bitrix, token)).json()["error"] == "invalid_grant"


async def test_leaky_bucket_burst_then_drain(bitrix: httpx.AsyncClient) -> None:
    await bitrix.post("/_sandbox/config", json={"rate_limit_burst": 6, "rate_limit_drain_per_s": 2})
    token = (await portal(bitrix))["access_token"]
    codes = [(await bitrix.get("/rest/profile.json", params={"auth": token})).status_code for _ in range(8)]
    assert codes[:6] == [200] * 6 and codes[6:] == [503, 503]
    r = await bitrix.get("/rest/profile.json", params={"auth": token})
    assert r.json() == {"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"}
    await asyncio.sleep(0.6)  # drains 2/s: one slot back after 0.5 s
    assert (await bitrix.get("/rest/profile.json", params={"auth": token})).status_code == 200
    assert (await bitrix.get("/rest/profile.json", params={"auth": token})).status_code == 503
    # The other portal has its own bucket.
    other = (await portal(bitrix, "sandbox-member-2"))["access_token"]
    assert (await bitrix.get("/rest/profile.json", params={"auth": other})).status_code == 200
    s = await stats(bitrix)
    assert s["rate_limited_count"] == 4 and s["max_requests_in_any_second"] >= 6


async def test_batch_counts_as_one_request(bitrix: httpx.AsyncClient) -> None:
    await bitrix.post("/_sandbox/config", json={"rate_limit_burst": 2})
    token = (await portal(bitrix))["access_token"]
    cmd = {f"c{i}": "profile" for i in range(50)}
    r = await bitrix.post("/rest/batch.json", json={"auth": token, "cmd": cmd})
    assert r.status_code == 200 and len(r.json()["result"]["result"]) == 50
    assert (await bitrix.get("/rest/profile.json", params={"auth": token})).status_code == 200
    assert (await bitrix.get("/rest/profile.json", params={"auth": token})).status_code == 503
