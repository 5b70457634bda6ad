"""The real `meta-ingress-web` process against real Kafka: webhooks in, events out."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from pathlib import Path

import httpx
import pytest
from meta_ingress.web.media_url import sign_url
from meta_support import (
    APP_SECRET,
    MEMBER,
    PNID,
    TOKEN,
    VERIFY_TOKEN,
    WABA,
    Fakes,
    TopicReader,
    base_env,
    dump,
    msg,
    sign,
    status,
    value,
    webhook,
)
from zaptrix.kafka import Flow, topics_for
from zaptrix_testing.ports import free_port
from zaptrix_testing.processes import BIN, Proc, Spec, start_processes, stop_all


@pytest.fixture
async def reader(kafka_bootstrap: str, topic_prefix: str) -> TopicReader:
    r = await TopicReader(kafka_bootstrap, topics_for(Flow.WA_TO_B24, topic_prefix).main).start()
    await r.take(10_000, within=0.5)  # skip what earlier tests produced
    yield r  # type: ignore[misc]
    await r.stop()


async def post(web: Proc, body: bytes, signature: str | None = "auto") -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if signature == "auto":
        headers["X-Hub-Signature-256"] = sign(body)
    elif signature is not None:
        headers["X-Hub-Signature-256"] = signature
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(f"{web.url}/webhooks/meta", content=body, headers=headers)


async def test_verification_handshake(web: Proc, fresh: Fakes) -> None:
    async with httpx.AsyncClient(base_url=web.url) as client:
        ok = await client.get(
            "/webhooks/meta",
            params={"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444"},
        )
        assert ok.status_code == 200
        assert ok.text == "1158201444"
        assert ok.headers["content-type"].startswith("text/plain")
        wrong = await client.get(
            "/webhooks/meta",
            params={"hub.mode": "subscribe", "hub.verify_token": "nope", "hub.challenge": "x"},
        )
        assert wrong.status_code == 403
        missing = await client.get("/webhooks/meta", params={"hub.mode": "subscribe", "hub.challenge": "x"})
        assert missing.status_code == 400
        mode = await client.get(
            "/webhooks/meta",
            params={"hub.mode": "unsubscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "x"},
        )
        assert mode.status_code == 400


async def inbound_by_number(web: Proc) -> float:
    """zaptrix_meta_inbound_by_number_total of PNID (the no-messages-from-a-number alert reads it)."""
    async with httpx.AsyncClient(timeout=10) as client:
        metrics = (await client.get(f"{web.url}/metrics")).text
    line = f'zaptrix_meta_inbound_by_number_total{{phone_number_id="{PNID}"}} '
    return next((float(x.removeprefix(line)) for x in metrics.splitlines() if x.startswith(line)), 0.0)


async def test_multi_message_webhook_becomes_one_event_each(
    web: Proc, fresh: Fakes, reader: TopicReader, kafka_bootstrap: str, topic_prefix: str
) -> None:
    before = await inbound_by_number(web)
    operator_side = await TopicReader(kafka_bootstrap, topics_for(Flow.B24_TO_WA, topic_prefix).main).start()
    await operator_side.take(10_000, within=0.5)
    text = msg("text", {"body": "Olá — ação"})
    image = msg("image", {"id": "9001", "mime_type": "image/jpeg", "sha256": "abc", "caption": "look"})
    other = msg("text", {"body": "from the second customer"}, frm="4915112345678")
    st = status("wamid.OUT1", "delivered")
    failed = status("wamid.OUT2", "failed", errors=[{"code": 131047, "title": "Re-engagement message"}])
    payload = webhook(value([text, image], [st]), value([other], [failed]), entries=2)
    body = dump(payload).replace("Olá — ação".encode(), b"Ol\\u00e1 \\u2014 a\\u00e7\\u00e3o")  # Meta escapes
    resp = await post(web, body)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"events": 6}  # 5 items, and the 131047 failure once more for the meta dispatcher
    records = await reader.take(5)
    assert len(records) == 5
    by_id = {r.envelope.event_id: r for r in records}
    assert set(by_id) == {
        f"wa:{text['id']}",
        f"wa:{image['id']}",
        f"wa:{other['id']}",
        "wa-status:wamid.OUT1:delivered",
        "wa-status:wamid.OUT2:failed",
    }
    for rec in records:
        assert rec.headers["traceparent"].startswith("00-")
        assert rec.headers["zaptrix-event-id"] == rec.envelope.event_id
        assert rec.key == rec.envelope.conversation_key.encode()
    first = by_id[f"wa:{text['id']}"]
    assert first.envelope.conversation_key == f"{PNID}:16505551234"
    assert first.envelope.customer_message.text == "Olá — ação"
    assert first.envelope.customer_message.profile_name == "Ana"
    # one conversation keeps its order: both messages of 16505551234 on one partition, in order
    pic = by_id[f"wa:{image['id']}"].envelope.customer_message
    assert pic.media[0].url.startswith(f"{web.url}/media/{PNID}/9001?")
    assert pic.text == "look"
    failure = by_id["wa-status:wamid.OUT2:failed"].envelope.whatsapp_status
    assert failure.errors[0].code == 131047
    # The closed window also goes to the b24-to-wa flow, acknowledged by Kafka before the 200.
    (window,) = await operator_side.take(1, within=5)
    await operator_side.stop()
    assert window.envelope.event_id == "wa-window:wamid.OUT2"
    assert window.key == f"{PNID}:16505551234".encode()
    assert window.headers["zaptrix-event-type"] == "window_closed"
    assert window.envelope.window_closed.wamid == "wamid.OUT2"
    # the credentials were fetched once for the whole webhook, not per event
    assert fresh.token_keeper.calls.count(f"GetChannelCredentials:{PNID}") <= 1
    # three customer messages (statuses are not messages) counted for the number that received them
    assert await inbound_by_number(web) == before + 3


async def test_a_history_webhook_goes_to_its_own_topic(
    web: Proc, fresh: Fakes, reader: TopicReader, kafka_bootstrap: str, topic_prefix: str
) -> None:
    """Thousands of old messages must never queue in front of live traffic: wa-history, not wa-to-b24."""
    history = await TopicReader(kafka_bootstrap, topics_for(Flow.WA_HISTORY, topic_prefix).main).start()
    await history.take(10_000, within=0.5)
    old = [msg("text", {"body": f"old {i}"}) | {"history_context": {"status": "READ"}} for i in range(3)]
    chunk = {
        "metadata": {"phase": 0, "chunk_order": 1, "progress": 100},
        "threads": [{"id": "16505551234", "messages": old}],
    }
    change = value() | {"history": [chunk]}
    payload = {
        "object": "whatsapp_business_account",
        "entry": [{"id": WABA, "changes": [{"field": "history", "value": change}]}],
    }
    resp = await post(web, dump(payload))
    assert resp.status_code == 200 and resp.json() == {"events": 3}, resp.text
    records = await history.take(3)
    await history.stop()
    assert [r.envelope.history_message.text for r in records] == [
        "old 0",
        "old 1",
        "old 2",
    ]  # one key: in order
    assert {r.key for r in records} == {f"{PNID}:16505551234".encode()}
    assert await reader.take(1, within=1) == []  # nothing on the live topic


async def test_bad_or_missing_signature_is_401_and_produces_nothing(
    web: Proc, fresh: Fakes, reader: TopicReader
) -> None:
    body = dump(webhook(value([msg("text", {"body": "forged"})])))
    assert (await post(web, body, sign(body, "not-the-secret"))).status_code == 401
    assert (await post(web, body, None)).status_code == 401
    assert (await post(web, body, "sha1=abc")).status_code == 401
    tampered = body.replace(b"forged", b"F0rged")
    assert (await post(web, tampered, sign(body))).status_code == 401
    assert await reader.nothing_within(0.5)
    good = dump(webhook(value([msg("text", {"body": "genuine"})])))
    assert (await post(web, good)).status_code == 200
    records = await reader.take(1)
    assert records[0].envelope.customer_message.text == "genuine"


async def test_malformed_and_unknown_shapes_are_400_never_500(
    web: Proc, fresh: Fakes, reader: TopicReader
) -> None:
    # Nothing names a channel: no app secret to check the signature with, so 401 whatever the shape.
    for body in [
        b"",
        b"{",
        b"[]",
        b'"text"',
        b"null",
        b'{"object": "page", "entry": []}',
        b"[" * 100_000,
        "\udcff".encode("utf-8", "surrogatepass"),
    ]:
        resp = await post(web, body)
        assert resp.status_code == 401, (body[:80], resp.status_code, resp.text)
    # Signed for a known channel, then unreadable: 400 (read only after the signature is verified).
    pnid = f'"phone_number_id": "{PNID}"'
    cases = [
        f'{{"x": {{{pnid}}}'.encode(),
        f'{{"object": "page", "x": {{{pnid}}}}}'.encode(),
        f'{{"object": "whatsapp_business_account", "entry": {{}}, "x": {{{pnid}}}}}'.encode(),
        f'{{"object": "whatsapp_business_account", "x": {{{pnid}}}, '.encode()
        + b'"entry": [{"changes": [{"field": "messages", "value": []}]}]}',
        f'{{"object": "whatsapp_business_account", "x": {{{pnid}}}, '.encode()
        + b'"entry": [{"changes": [{"field": "messages", "value": {}}]}]}',
        f'{{"x": {{{pnid}}}, "y": '.encode() + b"[" * 100_000,
    ]
    for body in cases:
        resp = await post(web, body)
        assert resp.status_code == 400, (body[:80], resp.status_code, resp.text)
        assert resp.json()["error"]
    # a signed message without an id cannot be deduplicated: 400 (Meta keeps it and retries)
    no_id = dump(webhook(value([{"from": "1", "type": "text", "text": {"body": "x"}}])))
    resp = await post(web, no_id)
    assert resp.status_code == 400 and "id" in resp.json()["error"]
    # fuzz: random mutations of a valid payload are answered 200/400/401/413, never 5xx
    base = dump(webhook(value([msg("location", {"latitude": 1.5, "longitude": 2})], [status("w", "read")])))
    rng = random.Random(7)
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(150):
            data = bytearray(base)
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(len(data))] = rng.choice(b'{}[]":,0123456789abcnull\\ \xff')
            body = bytes(data)
            resp = await client.post(
                f"{web.url}/webhooks/meta", content=body, headers={"X-Hub-Signature-256": sign(body)}
            )
            assert resp.status_code in (200, 400, 401, 413), (body, resp.status_code, resp.text)


async def test_unknown_channel_is_401_or_parked_and_webhooks_without_channel(
    web: Proc, fresh: Fakes, kafka_bootstrap: str, topic_prefix: str
) -> None:
    dlq = await TopicReader(kafka_bootstrap, topics_for(Flow.WA_TO_B24, topic_prefix).dlq).start()
    await dlq.take(10_000, within=0.5)
    try:
        # A number nobody vouches for: the same 401 as a bad signature, the id not echoed (Meta retries).
        stranger = dump(webhook(value([msg("text", {"body": "hi"})], pnid="999"))).replace(
            WABA.encode(), b"300000000000003"
        )
        resp = await post(web, stranger)
        assert resp.status_code == 401 and "999" not in resp.text
        # Warm the cache: a known channel of the WABA vouches for its numbers not set up yet (parked).
        assert (
            await post(web, dump(webhook(value([msg("text", {"body": "warm the cache"})]))))
        ).status_code == 200
        newcomer = msg("text", {"body": "hi"})
        resp = await post(web, dump(webhook(value([newcomer], pnid="999"))))
        assert resp.status_code == 200 and resp.json() == {"events": 0, "parked": 1}
        parked = [r for r in await dlq.take(5, within=5) if r.envelope.event_id == f"wa:{newcomer['id']}"]
        assert parked and parked[0].headers["zaptrix-dlq-reason"].startswith("unknown channel")
    finally:
        await dlq.stop()
    # Only fields we do not handle (no channel): 200 when signed by the WABA's app secret, else 401.
    other = dump(
        {
            "object": "whatsapp_business_account",
            "entry": [
                {"id": WABA, "changes": [{"field": "account_update", "value": {"event": "VERIFIED_ACCOUNT"}}]}
            ],
        }
    )
    assert (await post(web, other)).status_code == 200
    assert (await post(web, other, sign(other, "wrong"))).status_code == 401


async def test_token_keeper_down_is_503(web: Proc, fresh: Fakes) -> None:
    fresh.token_keeper.down = True
    await asyncio.sleep(
        0.6
    )  # the web's cache TTL in these tests is 0.5 s (stale entries still serve: new channel)
    fresh.token_keeper.channels["555"] = fresh.token_keeper.channels[PNID]
    resp = await post(web, dump(webhook(value([msg("text", {"body": "hi"})], pnid="555"))))
    assert resp.status_code == 503


async def test_kafka_unreachable_is_503(web_without_kafka: Proc, fresh: Fakes) -> None:
    async with httpx.AsyncClient(base_url=web_without_kafka.url) as client:
        ready = await client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["dependencies"] == {"kafka": "down", "token_keeper": "up"}
        body = dump(webhook(value([msg("text", {"body": "hi"})])))
        resp = await client.post("/webhooks/meta", content=body, headers={"X-Hub-Signature-256": sign(body)})
        assert resp.status_code == 503
        assert "Kafka" in resp.json()["error"]
        # the verification handshake does not need Kafka
        verify = await client.get(
            "/webhooks/meta",
            params={"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "7"},
        )
        assert verify.text == "7"


async def test_logs_never_carry_secrets(web: Proc, web_without_kafka: Proc, dispatcher: Proc) -> None:
    for proc in (web, web_without_kafka, dispatcher):
        logs = proc.logs()
        assert APP_SECRET not in logs and TOKEN not in logs


async def test_sandbox_webhook_and_media_proxy_streams_the_file(
    web: Proc, fresh: Fakes, graph: httpx.AsyncClient, reader: TopicReader
) -> None:
    """The Graph stand-in posts a signed image webhook to the real web process; the signed URL in the event
    streams the very bytes the stand-in holds (media id → Graph lookup → download with the token)."""
    (
        await graph.post("/_sandbox/config", json={"webhook_url": f"{web.url}/webhooks/meta"})
    ).raise_for_status()
    sent = await graph.post(
        "/_sandbox/customers/4917000000001/messages",
        json={
            "type": "document",
            "media": {
                "caption": "my invoice",
                "filename": "Rechnung März.pdf",
                "mime_type": "application/pdf",
            },
        },
    )
    assert sent.json()["status_code_from_gateway"] == 200
    (record,) = await reader.take(1)
    message = record.envelope.customer_message
    assert (message.type, message.text, message.wa_id) == ("document", "my invoice", "4917000000001")
    media = message.media[0]
    assert media.filename == "Rechnung März.pdf" and media.url.startswith(
        f"{web.url}/media/{PNID}/{media.media_id}?"
    )
    expected = (await graph.get(f"/_sandbox/media/{media.media_id}")).json()
    async with httpx.AsyncClient(timeout=10) as client:
        resp = await client.get(media.url)
        assert resp.status_code == 200
        assert hashlib.sha256(resp.content).hexdigest() == expected["sha256"]
        assert resp.headers["content-type"] == "application/pdf"
        assert resp.headers["content-length"] == str(expected["size"])
        assert "filename*=UTF-8''Rechnung%20M%C3%A4rz.pdf" in resp.headers["content-disposition"]
        head = await client.head(media.url)
        assert head.status_code == 200 and head.headers["content-type"] == "application/pdf"
        # tampered, expired, unknown
        assert (await client.get(media.url.replace("sig=", "sig=0"))).status_code == 403
        other = media.url.replace(f"/{media.media_id}?", "/1234567?")
        assert (await client.get(other)).status_code == 403
        secret = b"test-media-secret-0123456789abcdef"
        expired = sign_url(web.url, secret, PNID, media.media_id, "x.pdf", 60, now=time.time() - 120)
        refused = await client.get(expired)
        assert refused.status_code == 403 and "expired" in refused.text
        unknown = sign_url(web.url, secret, PNID, "999999", "x.pdf", 60)
        assert (await client.get(unknown)).status_code == 404
        metrics = (await client.get(f"{web.url}/metrics")).text
    assert 'zaptrix_meta_media_proxy_total{outcome="ok"}' in metrics


async def test_sandbox_batch_of_every_type(
    web: Proc, fresh: Fakes, graph: httpx.AsyncClient, reader: TopicReader
) -> None:
    (
        await graph.post("/_sandbox/config", json={"webhook_url": f"{web.url}/webhooks/meta"})
    ).raise_for_status()
    kinds = [
        "text",
        "image",
        "video",
        "audio",
        "document",
        "sticker",
        "location",
        "contacts",
        "interactive",
        "button",
        "reaction",
        "unsupported",
    ]
    items = [
        {"type": k, "wa_id": f"49170000{i:04d}", "text": "hi" if k == "text" else None}
        for i, k in enumerate(kinds)
    ]
    items[10]["reaction"] = {"message_id": "wamid.X", "emoji": "❤️"}
    resp = await graph.post("/_sandbox/webhooks", json={"messages": items, "layout": "entries"})
    assert resp.json()["status_code_from_gateway"] == 200, resp.text
    records = await reader.take(len(kinds))
    got = {r.envelope.customer_message.type: r.envelope.customer_message for r in records}
    assert set(got) == set(kinds)
    assert got["audio"].media[0].kind == "voice"
    assert got["location"].text.startswith("📍 Location:")
    assert got["contacts"].text.startswith("👤 Contact: Max Mustermann")
    assert got["reaction"].text == "Reacted ❤️ to your message"
    assert got["unsupported"].text.startswith("[Unsupported message type: unknown]")
    assert all(m.raw_json for m in got.values())


async def test_token_keeper_unreachable_the_web_stays_ready(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    """Readiness is the pod's own state (its Kafka producer started), not token-keeper's: with token-keeper
    gone the pod stays in rotation (stale credentials keep verifying what they can; the rest answers 503
    and Meta retries), and token-keeper shows as down in /health and zaptrix_dependency_up."""
    port, dead = free_port(), f"127.0.0.1:{free_port()}"
    env = {
        **base_env(kafka_bootstrap, topic_prefix, dead, "http://127.0.0.1:9"),
        "ZAPTRIX_WEB_PORT": str(port),
    }
    (web,) = start_processes(
        Spec([str(BIN / "meta-ingress-web")], env, f"http://127.0.0.1:{port}/ready", tmp_path / "web.log")
    )
    try:
        async with httpx.AsyncClient(base_url=web.url) as client:
            ready = await client.get("/ready")
            health = await client.get("/health")
            metrics = (await client.get("/metrics")).text
    finally:
        stop_all([web])
    assert ready.status_code == 200 and ready.json()["ready"] is True
    # (kafka may still read "down" here: the checks are cached for 1 s from the first probe, before the
    # producer had started; readiness itself is never cached)
    assert health.status_code == 200 and health.json()["dependencies"]["token_keeper"] == "down"
    assert 'zaptrix_dependency_up{dependency="token_keeper"} 0.0' in metrics


async def test_status_echoing_our_part_id_records_the_send(
    web: Proc, fresh: Fakes, reader: TopicReader
) -> None:
    """A status webhook whose biz_opaque_callback_data is one of our part ids records that Meta took the
    send (for the dispatcher's reconciliation of an ambiguous send); the status event still goes to Kafka.
    A failed status and a value the mapper could not take record nothing."""
    part = f"b24:{MEMBER}:{random.randrange(10**9)}#p2"
    sent = status("wamid.ECHO1", "sent", biz_opaque_callback_data=part)
    delivered = status("wamid.ECHO1", "delivered", biz_opaque_callback_data=part)
    failed = status("wamid.ECHO2", "failed", biz_opaque_callback_data=part + "x")
    too_long = status("wamid.ECHO3", "sent", biz_opaque_callback_data="b" * 512)
    body = dump(webhook(value(statuses=[sent, delivered, failed, too_long])))
    resp = await post(web, body)
    assert resp.status_code == 200, resp.text
    events = {r.envelope.event_id for r in await reader.take(4, within=10)}
    assert {"wa-status:wamid.ECHO1:sent", "wa-status:wamid.ECHO2:failed"} <= events
    deadline = time.monotonic() + 10
    while f"sent:{PNID}:{part}" not in fresh.mapper.processed and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert fresh.mapper.processed[f"sent:{PNID}:{part}"] == "wamid.ECHO1"
    assert f"sent:{PNID}:{part}x" not in fresh.mapper.processed
    assert not [k for k in fresh.mapper.processed if k.startswith(f"sent:{PNID}:bbb")]
