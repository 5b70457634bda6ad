"""Media: URL lookup, Bearer-protected expiring download, upload, and `link` media fetched like Meta does."""

from __future__ import annotations

import hashlib

import httpx

from .conftest import GatewayStub

TOKEN = {"Authorization": "Bearer sandbox-wa-token"}


async def test_inbound_media_lookup_and_download(graph: httpx.AsyncClient) -> None:
    r = await graph.post(
        "/_sandbox/customers/491701234567/messages", json={"type": "image", "media": {"caption": "c"}}
    )
    image = r.json()["payload"]["entry"][0]["changes"][0]["value"]["messages"][0]["image"]
    assert image["mime_type"] == "image/jpeg" and image["caption"] == "c"
    info = await graph.get(f"/v23.0/{image['id']}", headers=TOKEN)
    assert info.status_code == 200
    meta = info.json()
    assert set(meta) == {"messaging_product", "url", "mime_type", "sha256", "file_size", "id"}
    assert (await graph.get(meta["url"])).status_code == 401  # the download needs the token too
    data = await graph.get(meta["url"], headers=TOKEN)
    assert data.status_code == 200 and data.headers["content-type"] == "image/jpeg"
    assert data.content[:3] == b"\xff\xd8\xff" and len(data.content) == meta["file_size"]
    assert hashlib.sha256(data.content).hexdigest() == meta["sha256"]
    unknown = await graph.get("/v23.0/123456789", headers=TOKEN)
    assert unknown.status_code == 400 and unknown.json()["error"]["error_subcode"] == 33


async def test_media_url_expires(graph: httpx.AsyncClient) -> None:
    await graph.post("/_sandbox/config", json={"media_url_ttl_s": -1})
    r = await graph.post("/_sandbox/customers/491701234567/messages", json={"type": "sticker"})
    media_id = r.json()["payload"]["entry"][0]["changes"][0]["value"]["messages"][0]["sticker"]["id"]
    url = (await graph.get(f"/v23.0/{media_id}", headers=TOKEN)).json()["url"]
    assert (await graph.get(url, headers=TOKEN)).status_code == 403


async def test_upload_then_send_by_id(graph: httpx.AsyncClient, stub: GatewayStub) -> None:
    await graph.post("/_sandbox/customers/491701234567/messages", json={"text": "hi"})
    bad = await graph.post(
        "/v23.0/100000000000001/media",
        headers=TOKEN,
        data={"messaging_product": "whatsapp", "type": "image/gif"},
        files={"file": ("a.gif", b"GIF89a", "image/gif")},
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == 100
    up = await graph.post(
        "/v23.0/100000000000001/media",
        headers=TOKEN,
        data={"messaging_product": "whatsapp", "type": "application/pdf"},
        files={"file": ("offer.pdf", b"%PDF-1.4 test", "application/pdf")},
    )
    assert up.status_code == 200
    media_id = up.json()["id"]
    r = await graph.post(
        "/v23.0/100000000000001/messages",
        headers=TOKEN,
        json={
            "messaging_product": "whatsapp",
            "to": "491701234567",
            "type": "document",
            "document": {"id": media_id, "filename": "offer.pdf", "caption": "Offer"},
        },
    )
    assert r.status_code == 200
    hooks = await stub.wait_for("/webhooks/meta", 2)
    assert hooks[1].json()["entry"][0]["changes"][0]["value"]["statuses"][0]["status"] == "sent"


async def test_link_media_is_downloaded_and_checked(graph: httpx.AsyncClient, stub: GatewayStub) -> None:
    await graph.post("/_sandbox/config", json={"window_enforced": False, "pair_burst": 5})
    stub.files["/media/ok.png"] = (200, "image/png", b"\x89PNG\r\n\x1a\nfake")
    stub.files["/media/page.html"] = (200, "text/html", b"<html>")
    send = {"messaging_product": "whatsapp", "to": "491701234567", "type": "image"}
    for path in ("/media/ok.png", "/media/missing.png", "/media/page.html"):
        r = await graph.post(
            "/v23.0/100000000000001/messages",
            headers=TOKEN,
            json={**send, "image": {"link": f"{stub.url}{path}"}},
        )
        assert r.status_code == 200
    hooks = await stub.wait_for("/webhooks/meta", 5)
    statuses = [
        h.json()["entry"][0]["changes"][0]["value"]["statuses"][0]
        for h in hooks
        if h.path == "/webhooks/meta"
    ]
    failed = [s for s in statuses if s["status"] == "failed"]
    assert len(failed) == 2 and {s["errors"][0]["code"] for s in failed} == {131053}
    sent = (await graph.get("/_sandbox/sent")).json()["sent"]
    assert sent[0]["media"]["content_type"] == "image/png" and sent[0]["outcome"] != "failed"
