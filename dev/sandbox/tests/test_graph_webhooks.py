"""Inbound and status webhooks: Meta's envelope, X-Hub-Signature-256, retries, batching, replay."""

from __future__ import annotations

import asyncio
import hashlib
import hmac

import httpx

from .conftest import GatewayStub

SECRET = b"sandbox-app-secret"
PNID = "100000000000001"
TOKEN = {"Authorization": "Bearer sandbox-wa-token"}


def verifies(raw: bytes, header: str | None) -> bool:
    expected = "sha256=" + hmac.new(SECRET, raw, hashlib.sha256).hexdigest()
    return header is not None and hmac.compare_digest(expected, header)


async def test_inbound_text_webhook_is_signed_and_shaped_like_meta(
    graph: httpx.AsyncClient, stub: GatewayStub
) -> None:
    r = await graph.post(
        "/_sandbox/customers/491701234567/messages", json={"text": "Grüße 👋", "name": "Anna"}
    )
    assert r.status_code == 200
    assert r.json()["status_code_from_gateway"] == 200
    [hook] = stub.on("/webhooks/meta")
    assert verifies(hook.body, hook.headers.get("X-Hub-Signature-256"))
    assert b"\\u00fc" in hook.body  # non-ASCII is escaped, and the signature covers exactly these bytes
    body = hook.json()
    assert body["object"] == "whatsapp_business_account"
    change = body["entry"][0]["changes"][0]
    assert change["field"] == "messages"
    value = change["value"]
    assert value["messaging_product"] == "whatsapp"
    assert value["metadata"] == {"display_phone_number": "15550000001", "phone_number_id": PNID}
    assert value["contacts"] == [{"profile": {"name": "Anna"}, "wa_id": "491701234567"}]
    [message] = value["messages"]
    assert message["from"] == "491701234567" and message["type"] == "text"
    assert message["text"] == {"body": "Grüße 👋"}
    assert message["id"] == r.json()["wamid"] and message["id"].startswith("wamid.")
    assert message["timestamp"].isdigit()


async def test_invalid_and_missing_signatures_do_not_verify(
    graph: httpx.AsyncClient, stub: GatewayStub
) -> None:
    await graph.post("/_sandbox/customers/491701234567/messages", json={"text": "x", "signature": "invalid"})
    await graph.post("/_sandbox/customers/491701234567/messages", json={"text": "y", "signature": "missing"})
    bad, missing = stub.on("/webhooks/meta")
    assert bad.headers.get("X-Hub-Signature-256") and not verifies(
        bad.body, bad.headers["X-Hub-Signature-256"]
    )
    assert "X-Hub-Signature-256" not in missing.headers


async def test_typed_inbound_messages(graph: httpx.AsyncClient, stub: GatewayStub) -> None:
    first = (await graph.post("/_sandbox/customers/491701234567/messages", json={"text": "hi"})).json()[
        "wamid"
    ]
    cases = [
        ({"type": "document", "media": {"filename": "offer.pdf", "caption": "see"}}, "document"),
        ({"type": "audio"}, "audio"),
        ({"location": {"latitude": 1.5, "longitude": 2.5}}, "location"),
        ({"interactive": {"type": "list_reply", "id": "r1", "title": "Row"}}, "interactive"),
        ({"reaction": {"message_id": first, "emoji": "👍"}}, "reaction"),
        ({"type": "unsupported"}, "unsupported"),
        ({"text": "re", "context": {"message_id": first}, "referral": {"headline": "Ad"}}, "text"),
    ]
    for spec, kind in cases:
        payload = (await graph.post("/_sandbox/customers/491701234567/messages", json=spec)).json()["payload"]
        message = payload["entry"][0]["changes"][0]["value"]["messages"][0]
        assert message["type"] == kind
    doc, audio, loc, inter, react, unsup, reply = (
        r.json()["entry"][0]["changes"][0]["value"]["messages"][0] for r in stub.on("/webhooks/meta")[1:]
    )
    assert doc["document"]["filename"] == "offer.pdf" and doc["document"]["mime_type"] == "application/pdf"
    assert audio["audio"]["mime_type"] == "audio/ogg; codecs=opus" and audio["audio"]["voice"] is True
    assert loc["location"] == {"latitude": 1.5, "longitude": 2.5}
    assert inter["interactive"] == {"type": "list_reply", "list_reply": {"id": "r1", "title": "Row"}}
    assert react["reaction"] == {"message_id": first, "emoji": "👍"}
    assert unsup["errors"][0]["code"] == 131051
    assert reply["context"] == {"from": "15550000001", "id": first}
    assert reply["referral"]["headline"] == "Ad" and reply["referral"]["source_type"] == "ad"


async def test_status_webhooks_follow_a_send(graph: httpx.AsyncClient, stub: GatewayStub) -> None:
    await graph.post("/_sandbox/customers/491701234567/messages", json={"text": "hi"})
    r = await graph.post(
        "/v23.0/100000000000001/messages",
        headers=TOKEN,
        json={
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": "+49 170 1234567",
            "type": "text",
            "text": {"body": "Hello Anna", "preview_url": False},
            "biz_opaque_callback_data": "b24:member-1:42#p1",
        },
    )
    assert r.status_code == 200
    body = r.json()
    assert body["contacts"] == [{"input": "+49 170 1234567", "wa_id": "491701234567"}]
    wamid = body["messages"][0]["id"]
    hooks = (await stub.wait_for("/webhooks/meta", 4))[1:]
    statuses = [h.json()["entry"][0]["changes"][0]["value"]["statuses"][0] for h in hooks]
    assert [s["status"] for s in statuses] == ["sent", "delivered", "read"]
    assert all(s["id"] == wamid and s["recipient_id"] == "491701234567" for s in statuses)
    assert all(s["biz_opaque_callback_data"] == "b24:member-1:42#p1" for s in statuses)
    # Per-message pricing (2026): a free-form reply inside the window is within the month's 1,000 free.
    free = {"billable": False, "pricing_model": "PMP", "category": "service", "type": "free_customer_service"}
    assert statuses[0]["pricing"] == statuses[1]["pricing"] == free
    assert statuses[0]["conversation"]["origin"] == {"type": "service"}
    assert "pricing" not in statuses[2]
    assert all(verifies(h.body, h.headers.get("X-Hub-Signature-256")) for h in hooks)
    sent = (await graph.get("/_sandbox/sent")).json()["sent"]
    assert sent[0]["outcome"] == "read" and sent[0]["statuses"] == ["sent", "delivered", "read"]


async def test_non_200_answers_are_retried_and_recorded(graph: httpx.AsyncClient, stub: GatewayStub) -> None:
    stub.statuses.extend([503, 500])
    r = await graph.post("/_sandbox/customers/491701234567/messages", json={"text": "hi"})
    assert r.json()["status_code_from_gateway"] == 503
    hooks = await stub.wait_for("/webhooks/meta", 3)
    assert len({h.body for h in hooks}) == 1  # same bytes each time
    await asyncio.sleep(0.05)
    [delivery] = (await graph.get("/_sandbox/webhooks")).json()["webhooks"]
    assert [a["status_code"] for a in delivery["attempts"]] == [503, 500, 200]
    assert delivery["final_status"] == 200


async def test_batch_webhook_and_replay(graph: httpx.AsyncClient, stub: GatewayStub) -> None:
    r = await graph.post(
        "/_sandbox/webhooks",
        json={
            "messages": [
                {"wa_id": "491701111111", "text": "one", "name": "A"},
                {"wa_id": "491702222222", "text": "two", "name": "B"},
                {"wa_id": "491701111111", "text": "three", "name": "A"},
            ]
        },
    )
    assert r.status_code == 200
    value = r.json()["payload"]["entry"][0]["changes"][0]["value"]
    assert [m["text"]["body"] for m in value["messages"]] == ["one", "two", "three"]
    assert [c["wa_id"] for c in value["contacts"]] == ["491701111111", "491702222222"]
    entries = (
        await graph.post(
            "/_sandbox/webhooks",
            json={
                "layout": "entries",
                "messages": [{"wa_id": "491701111111", "text": "a"}, {"wa_id": "491701111111", "text": "b"}],
            },
        )
    ).json()["payload"]["entry"]
    assert len(entries) == 2
    replay = await graph.post(f"/_sandbox/webhooks/{r.json()['delivery_id']}/replay")
    assert replay.json()["status_code_from_gateway"] == 200
    original, _, again = stub.on("/webhooks/meta")
    assert again.body == original.body
    assert again.headers["X-Hub-Signature-256"] == original.headers["X-Hub-Signature-256"]


async def test_webhook_lane_bounds_webhooks_in_flight_and_sends_each_signed_once() -> None:
    """240 status webhooks/s must not pile up inside httpx's pool: the lane lets ``concurrency`` out at
    once, the rest wait their turn, and every one goes out (once, with its signature)."""
    from zaptrix_sandbox.graph_settings import GraphOptions
    from zaptrix_sandbox.graph_state import GraphState
    from zaptrix_sandbox.graph_webhooks import WebhookLane, WebhookSender
    from zaptrix_sandbox.tasks import Background

    in_flight, most, seen = 0, 0, []

    async def gateway(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.01)
        seen.append((request.content, request.headers.get("X-Hub-Signature-256")))
        in_flight -= 1
        return httpx.Response(200)

    lane = WebhookLane(4, transport=httpx.MockTransport(gateway))
    sender = WebhookSender(GraphState(GraphOptions()), lane, Background())
    try:
        answers = await asyncio.gather(*(sender.send("status", {"n": n}) for n in range(60)))
    finally:
        await lane.aclose()
    assert [code for _, code in answers] == [200] * 60
    assert most == 4
    assert sorted(body for body, _ in seen) == sorted(f'{{"n":{n}}}'.encode() for n in range(60))
    assert all(verifies(body, signature) for body, signature in seen)
