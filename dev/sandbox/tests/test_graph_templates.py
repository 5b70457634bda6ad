"""Templates in the Graph stand-in: the message_templates listing with cursor pages, sends judged as Graph
does (132000, 132001, 132012, 132015, 131050), and the three template webhooks posted signed."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from typing import Any

import httpx
import pytest

from .conftest import GatewayStub

SECRET = b"sandbox-app-secret"
TOKEN = {"Authorization": "Bearer sandbox-wa-token"}
WABA = "200000000000001"
LIST = f"/v23.0/{WABA}/message_templates"
SEND = "/v23.0/100000000000001/messages"
WA = "491701234567"


def template(name: str, lang: str = "en_US", **components: list[dict[str, Any]]) -> dict[str, Any]:
    t: dict[str, Any] = {"name": name, "language": {"code": lang}}
    if components:
        t["components"] = [{"type": k, "parameters": v} for k, v in components.items()]
    return {"messaging_product": "whatsapp", "to": WA, "type": "template", "template": t}


def texts(*values: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": v} for v in values]


async def test_the_listing_pages_with_cursors_until_next_is_gone(graph: httpx.AsyncClient) -> None:
    seen: list[dict[str, Any]] = []
    params: dict[str, str] = {
        "limit": "2",
        "fields": "name,language,status,category,components,quality_score",
    }
    for _ in range(10):
        r = await graph.get(LIST, params=params, headers=TOKEN)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["data"]) <= 2
        seen += body["data"]
        if "next" not in body["paging"]:
            break
        params["after"] = body["paging"]["cursors"]["after"]
    names = [(t["name"], t["language"]) for t in seen]
    assert ("order_update", "pt_BR") in names and ("winter_sale", "en_US") in names
    assert len(names) == len(set(names)) == 7
    paused = next(t for t in seen if t["name"] == "winter_sale")
    assert (paused["status"], paused["quality_score"]["score"], paused["category"]) == (
        "PAUSED",
        "RED",
        "MARKETING",
    )
    assert all(t["id"].isdigit() for t in seen)
    assert (await graph.get(LIST, headers={"Authorization": "Bearer wrong"})).status_code == 401
    other = await graph.get("/v23.0/999/message_templates", headers=TOKEN)
    assert other.status_code == 400 and other.json()["error"]["code"] == 100
    bad_cursor = await graph.get(LIST, params={"after": "!!"}, headers=TOKEN)
    assert bad_cursor.status_code == 400


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (template("nope"), 132001),
        (template("order_update", "de"), 132001),
        (template("winter_sale"), 132015),
        (template("order_update", header=texts("A"), body=texts("1")), 132000),
        (template("order_update", body=texts("1", "2")), 132000),
        (template("invoice_ready", header=texts("not a file"), body=texts("1")), 132012),
        (
            template(
                "summer_sale",
                header=[{"type": "image", "image": {"link": "https://x/y.png"}}],
                body=texts("a", "b"),
            ),
            132000,
        ),
    ],
)
async def test_template_sends_are_judged_as_graph_does(
    graph: httpx.AsyncClient, payload: Any, code: int
) -> None:
    r = await graph.post(SEND, json=payload, headers=TOKEN)
    assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text


async def test_well_formed_template_sends_are_accepted(graph: httpx.AsyncClient) -> None:
    ok = template("order_update", "pt_BR", header=texts("A-1"), body=texts("12345", "sexta"))
    assert (await graph.post(SEND, json=ok, headers=TOKEN)).status_code == 200
    named = template(
        "summer_sale",
        header=[{"type": "image", "image": {"link": "https://x/y.png"}}],
        body=[
            {"type": "text", "text": "Ana", "parameter_name": "first_name"},
            {"type": "text", "text": "20%", "parameter_name": "discount"},
        ],
    )
    await asyncio.sleep(6.1)  # the pair rate limit: one message per 6 s to the same customer
    assert (await graph.post(SEND, json=named, headers=TOKEN)).status_code == 200


async def test_a_marketing_template_to_a_customer_who_stopped_fails_131050(
    graph: httpx.AsyncClient, stub: GatewayStub
) -> None:
    assert (
        await graph.post(f"/_sandbox/customers/{WA}/preferences", json={"value": "stop"})
    ).status_code == 200
    stub.clear()
    named = template(
        "summer_sale",
        header=[{"type": "image", "image": {"id": "1"}}],
        body=[
            {"type": "text", "text": "Ana", "parameter_name": "first_name"},
            {"type": "text", "text": "20%", "parameter_name": "discount"},
        ],
    )
    r = await graph.post(SEND, json=named, headers=TOKEN)
    assert r.status_code == 200  # accepted, then reported failed (like 131026)
    hooks = await stub.wait_for("/webhooks/meta", 1)
    st = hooks[0].json()["entry"][0]["changes"][0]["value"]["statuses"][0]
    assert st["status"] == "failed" and st["errors"][0]["code"] == 131050


def signed(hook: Any) -> dict[str, Any]:
    expected = "sha256=" + hmac.new(SECRET, hook.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, hook.headers.get("X-Hub-Signature-256") or "")
    body: dict[str, Any] = hook.json()
    return body


async def test_status_quality_and_category_changes_post_the_signed_webhooks(
    graph: httpx.AsyncClient, stub: GatewayStub
) -> None:
    r = await graph.post(
        "/_sandbox/templates/order_update/status", json={"event": "PAUSED", "title": "FIRST_PAUSE"}
    )
    assert r.status_code == 200
    hooks = stub.on("/webhooks/meta")
    assert len(hooks) == 2  # one per language
    body = signed(hooks[0])
    assert body["entry"][0]["id"] == WABA and isinstance(body["entry"][0]["time"], int)
    change = body["entry"][0]["changes"][0]
    assert change["field"] == "message_template_status_update"
    v = change["value"]
    assert (v["event"], v["message_template_name"], v["other_info"]["title"]) == (
        "PAUSED",
        "order_update",
        "FIRST_PAUSE",
    )
    assert isinstance(v["message_template_id"], int)
    refused = await graph.post(
        SEND, json=template("order_update", header=texts("A"), body=texts("1", "2")), headers=TOKEN
    )
    assert refused.json()["error"]["code"] == 132015
    stub.clear()
    await graph.post("/_sandbox/templates/hello_world/quality", json={"score": "YELLOW"})
    q = signed(stub.on("/webhooks/meta")[0])["entry"][0]["changes"][0]
    assert q["field"] == "message_template_quality_update"
    assert (q["value"]["previous_quality_score"], q["value"]["new_quality_score"]) == ("GREEN", "YELLOW")
    stub.clear()
    await graph.post(
        "/_sandbox/templates/hello_world/category", json={"category": "marketing", "notice": True}
    )
    await graph.post("/_sandbox/templates/hello_world/category", json={"category": "marketing"})
    notice, done = (signed(h)["entry"][0]["changes"][0]["value"] for h in stub.on("/webhooks/meta"))
    assert notice["correct_category"] == "MARKETING" and "new_category" not in notice
    assert (done["previous_category"], done["new_category"]) == ("UTILITY", "MARKETING")
    assert (await graph.post("/_sandbox/templates/nope/status", json={"event": "PAUSED"})).status_code == 404
    assert (
        await graph.post("/_sandbox/templates/hello_world/status", json={"event": "SHINY"})
    ).status_code == 400
