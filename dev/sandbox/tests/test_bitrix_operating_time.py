"""The Bitrix24 stand-in's per-method operating-time limit (B24 §6): 429 OPERATION_TIME_LIMIT per app and method;
and its manual block (OVERLOAD_LIMIT, fault injection)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from zaptrix_sandbox.bitrix_optime import OperatingTime

PORTAL = "sandbox-member-1"
SEND = "imconnector.send.messages"


async def token_of(bitrix: httpx.AsyncClient) -> str:
    return str((await bitrix.get(f"/_sandbox/portals/{PORTAL}")).json()["access_token"])


async def send(bitrix: httpx.AsyncClient, wa_id: str, mid: str, token: str = "") -> httpx.Response:
    params = {
        "auth": token or await token_of(bitrix),
        "CONNECTOR": "zaptrix_whatsapp",
        "LINE": "1",
        "MESSAGES": [
            {
                "user": {"id": wa_id, "name": "Anna"},
                "message": {"id": mid, "date": "1767225600", "text": "Hallo"},
                "chat": {"id": f"pn:{wa_id}"},
            }
        ],
    }
    return await bitrix.post(f"/rest/{SEND}.json", json=params)


async def configure(bitrix: httpx.AsyncClient, **options: Any) -> None:
    (await bitrix.post("/_sandbox/config", json=options)).raise_for_status()


async def profile(bitrix: httpx.AsyncClient, token: str) -> httpx.Response:
    return await bitrix.post("/rest/profile.json", json={"auth": token})


async def batch(bitrix: httpx.AsyncClient, cmd: dict[str, str]) -> dict[str, Any]:
    r = await bitrix.post("/rest/batch.json", json={"auth": await token_of(bitrix), "cmd": cmd})
    assert r.status_code == 200
    body: dict[str, Any] = r.json()
    return body


def test_baskets_slide_out_of_the_window() -> None:
    now = [0.0]
    used = OperatingTime(600.0, clock=lambda: now[0])
    used.charge("app", "m", 5.0)  # basket 0
    now[0] = 130.0
    used.charge("app", "m", 7.0)  # basket 2
    used.charge("other.app", "m", 100.0)
    now[0] = 599.0
    assert used.operating("app", "m") == 12.0 and used.reset_at("app", "m") == 600
    now[0] = 600.0  # basket 0 has left the window
    assert used.operating("app", "m") == 7.0 and used.reset_at("app", "m") == 720
    assert used.operating("app", "n") == 0.0 and used.reset_at("app", "n") == 1200
    now[0] = 720.0
    assert used.operating("app", "m") == 0.0 and used.operating("other.app", "m") == 0.0


async def test_a_method_over_its_limit_is_blocked_for_that_app_only(bitrix: httpx.AsyncClient) -> None:
    await configure(bitrix, operating_limit_s=1, operating_cost_s={"IMCONNECTOR.SEND.MESSAGES": 2})
    first = await send(bitrix, "491701", "wamid.ot1")
    assert first.status_code == 200 and first.json()["time"]["operating"] >= 2
    blocked = await send(bitrix, "491701", "wamid.ot2")
    now = time.time()
    assert blocked.status_code == 429
    body = blocked.json()
    assert body["error"] == "OPERATION_TIME_LIMIT" and body["error_description"]
    assert body["time"]["operating"] >= 2
    assert now < body["time"]["operating_reset_at"] <= now + 601
    # Other methods keep working, and so does the same method for another app of the portal.
    assert (await profile(bitrix, await token_of(bitrix))).status_code == 200
    other = await bitrix.post(f"/_sandbox/portals/{PORTAL}/tokens", json={"client_id": "other.app"})
    assert (await send(bitrix, "491701", "wamid.ot3", other.json()["access_token"])).status_code == 200
    chats = (await bitrix.get(f"/_sandbox/portals/{PORTAL}/chats")).json()["chats"]
    texts = [m["external_ids"] for c in chats for m in c["messages"] if m["direction"] == "client"]
    assert texts == [["wamid.ot1"], ["wamid.ot3"]]  # the blocked call stored nothing


async def test_batch_counts_nested_calls_per_method_and_not_itself(bitrix: httpx.AsyncClient) -> None:
    await configure(bitrix, operating_limit_s=2.5, operating_cost_s={"profile": 1, "batch": 100})
    body = await batch(bitrix, {"a": "profile", "b": "profile", "c": "profile", "s": "scope"})
    times = body["result"]["result_time"]
    assert [round(times[k]["operating"]) for k in "abc"] == [1, 2, 3]
    assert times["s"]["operating"] < 1 and body["time"]["operating"] == 0
    body = await batch(bitrix, {"a": "profile", "s": "scope"})
    assert body["result"]["result_error"]["a"]["error"] == "OPERATION_TIME_LIMIT"
    assert body["result"]["result_time"]["a"]["operating_reset_at"] > time.time()
    assert "s" in body["result"]["result"]  # the batch itself and the other method are not blocked
    assert (await profile(bitrix, await token_of(bitrix))).status_code == 429


async def test_the_block_lifts_once_the_window_has_passed(bitrix: httpx.AsyncClient) -> None:
    await configure(bitrix, operating_window_s=2, operating_limit_s=0.5, operating_cost_s={"profile": 1})
    token = await token_of(bitrix)
    assert (await profile(bitrix, token)).status_code == 200
    blocked = await profile(bitrix, token)
    assert blocked.status_code == 429
    reset_at = blocked.json()["time"]["operating_reset_at"]
    assert time.time() < reset_at <= time.time() + 3
    await asyncio.sleep(reset_at - time.time())
    again = await profile(bitrix, token)
    assert again.status_code == 200 and again.json()["time"]["operating"] >= 1


async def test_the_default_limit_never_blocks_ordinary_traffic(bitrix: httpx.AsyncClient) -> None:
    codes = []
    for n in range(40):  # within the leaky bucket's burst of 50
        r = await send(bitrix, "491702", f"wamid.d{n}")
        codes.append(r.status_code)
    assert codes == [200] * 40
    timing = r.json()["time"]
    fields = "start finish duration processing date_start date_finish operating operating_reset_at"
    assert sorted(timing) == sorted(fields.split())
    assert 0 < timing["operating"] < 5 and time.time() < timing["operating_reset_at"] <= time.time() + 601


async def test_an_overloaded_portal_refuses_every_call_until_lifted(bitrix: httpx.AsyncClient) -> None:
    """OVERLOAD_LIMIT (fault injection, Bitrix24's manual block): 503 with the documented code for every call
    and batch of the named portal, nothing done, the leaky bucket untouched; other portals go on."""
    token = await token_of(bitrix)
    other = (await bitrix.get("/_sandbox/portals/sandbox-member-2")).json()["access_token"]
    await configure(bitrix, overloaded_portals=[PORTAL], rate_limit_burst=2)
    for _ in range(3):  # over the bucket of 2 if they counted: still OVERLOAD_LIMIT, not QUERY_LIMIT_EXCEEDED
        refused = await send(bitrix, "4915100000001", f"wamid.over{_}", token)
        assert refused.status_code == 503 and refused.json()["error"] == "OVERLOAD_LIMIT"
        assert "manual individual block" in refused.json()["error_description"]
    r = await bitrix.post("/rest/batch.json", json={"auth": token, "cmd": {"a": "profile"}})
    assert r.status_code == 503 and r.json()["error"] == "OVERLOAD_LIMIT"
    assert (await profile(bitrix, other)).status_code == 200
    chats = (await bitrix.get(f"/_sandbox/portals/{PORTAL}/chats")).json()
    assert not any("wamid.over" in str(chat) for chat in chats), "a refused call stored a message"
    await configure(bitrix, overloaded_portals=[])
    assert (await profile(bitrix, token)).status_code == 200
