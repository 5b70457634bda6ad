"""Coexistence and consent webhooks of the Graph stand-in: documented shapes, signed like every delivery."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import httpx
import pytest

from .conftest import GatewayStub

SECRET = b"sandbox-app-secret"
WA = "491701234567"


def signed_change(stub: GatewayStub) -> dict[str, Any]:
    [hook] = stub.on("/webhooks/meta")
    expected = "sha256=" + hmac.new(SECRET, hook.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, hook.headers.get("X-Hub-Signature-256") or "")
    change: dict[str, Any] = hook.json()["entry"][0]["changes"][0]
    return change


async def test_echo_is_from_the_business_to_the_customer(graph: httpx.AsyncClient, stub: GatewayStub) -> None:
    r = await graph.post(f"/_sandbox/customers/{WA}/echo", json={"text": "vom Handy"})
    assert r.status_code == 200
    change = signed_change(stub)
    assert change["field"] == "smb_message_echoes"
    [echo] = change["value"]["message_echoes"]
    assert (echo["from"], echo["to"], echo["type"], echo["text"]) == (
        "15550000001",
        WA,
        "text",
        {"body": "vom Handy"},
    )
    assert echo["id"].startswith("wamid.") and "messages" not in change["value"]


@pytest.mark.parametrize("case", ["edit", "revoke"])
async def test_edit_and_revoke_name_the_original(
    graph: httpx.AsyncClient, stub: GatewayStub, case: str
) -> None:
    r = await graph.post(
        f"/_sandbox/customers/{WA}/{case}", json={"original_message_id": "wamid.O", "text": "neu"}
    )
    assert r.status_code == 200
    change = signed_change(stub)
    assert change["field"] == "messages"
    [message] = change["value"]["messages"]
    assert message["type"] == case and message[case]["original_message_id"] == "wamid.O"
    if case == "edit":
        assert message["edit"]["message"] == {"type": "text", "text": {"body": "neu"}}


async def test_preferences_contact_sync_and_history(graph: httpx.AsyncClient, stub: GatewayStub) -> None:
    await graph.post(f"/_sandbox/customers/{WA}/preferences", json={"value": "stop"})
    change = signed_change(stub)
    [pref] = change["value"]["user_preferences"]
    assert change["field"] == "user_preferences"
    assert (pref["wa_id"], pref["category"], pref["value"]) == (WA, "marketing_messages", "stop")
    stub.clear()
    await graph.post(f"/_sandbox/customers/{WA}/contact-sync", json={"full_name": "Anna Schmidt"})
    change = signed_change(stub)
    [item] = change["value"]["state_sync"]
    assert change["field"] == "smb_app_state_sync"
    assert (item["type"], item["action"], item["contact"]["full_name"]) == ("contact", "add", "Anna Schmidt")
    stub.clear()
    await graph.post(f"/_sandbox/customers/{WA}/history", json={"texts": ["hi", "hallo"]})
    change = signed_change(stub)
    [chunk] = change["value"]["history"]
    assert change["field"] == "history" and chunk["metadata"]["progress"] == 100
    first, second = chunk["threads"][0]["messages"]
    assert first["from"] == WA and second["from"] == "15550000001"
    assert first["history_context"]["status"] and int(first["timestamp"]) < int(second["timestamp"])


async def test_history_comes_in_several_chunks_or_declined(
    graph: httpx.AsyncClient, stub: GatewayStub
) -> None:
    texts = ["a", "b", "c", "d", "e"]
    r = await graph.post(
        f"/_sandbox/customers/{WA}/history", json={"texts": texts, "chunk_size": 2, "phase": 0}
    )
    assert r.status_code == 200 and len(r.json()["chunks"]) == 3
    hooks = stub.on("/webhooks/meta")
    chunks = [h.json()["entry"][0]["changes"][0]["value"]["history"][0] for h in hooks]
    assert [c["metadata"]["chunk_order"] for c in chunks] == [1, 2, 3]
    assert [c["metadata"]["progress"] for c in chunks] == [33, 66, 100]
    assert {c["metadata"]["phase"] for c in chunks} == {0}
    bodies = [m["text"]["body"] for c in chunks for t in c["threads"] for m in t["messages"]]
    assert bodies == texts and all(t["id"] == WA for c in chunks for t in c["threads"])
    stub.clear()
    await graph.post(f"/_sandbox/customers/{WA}/history", json={"declined": True})
    [chunk] = signed_change(stub)["value"]["history"]
    assert "threads" not in chunk and chunk["errors"][0]["code"] == 2593109


async def test_bad_requests_are_400(graph: httpx.AsyncClient, stub: GatewayStub) -> None:
    assert (
        await graph.post(f"/_sandbox/customers/{WA}/preferences", json={"value": "maybe"})
    ).status_code == 400
    assert (await graph.post(f"/_sandbox/customers/{WA}/echo", json={})).status_code == 400
    assert (await graph.post(f"/_sandbox/customers/{WA}/history", json={"texts": []})).status_code == 400
    assert stub.on("/webhooks/meta") == []
