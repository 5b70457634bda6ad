"""Both bitrix-ingress processes against the Bitrix24 stand-in (dev/sandbox) and real Kafka.

One stack per module: sandbox-bitrix, bitrix-ingress-web, bitrix-dispatcher as processes; mapper and
token-keeper as in-test fakes (the token-keeper fake refreshes through the stand-in's OAuth server, as the
real one does). Tests use distinct customers so they do not disturb each other.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from zaptrix.kafka import EventProducer, Flow, decode, new_envelope, topics_for
from zaptrix.kafka.admin import ensure_topics
from zaptrix.settings import KafkaSettings
from zaptrix.v1 import events_pb2, mapper_pb2
from zaptrix_testing.fakes import FakeTokenKeeper, GrpcFakes, Portal, start_fakes
from zaptrix_testing.ports import free_port
from zaptrix_testing.processes import Proc, console_script, start_process, wait_http
from zaptrix_testing.waiting import eventually

MEMBER = "sandbox-member-1"
# The offline-event reconciler has its own tests (test_offline_event_reconciler.py, tests/e2e); here it would
# cache the seeded token before the install test re-installs, so the expired-token test would count the
# stale token's rejection too.
NO_RECONCILER = {"ZAPTRIX_BITRIX_OFFLINE_POLL_S": "0"}
OVERLOAD_WAIT_S = 3.0  # the dispatcher's wait after OVERLOAD_LIMIT (600 s in production)
PNID = "100000000000001"
LINE = 1


@dataclass
class Stack:
    sandbox: str
    web_url: str
    dispatcher_ops: str
    fakes: GrpcFakes
    producer: EventProducer
    kafka: KafkaSettings
    http: httpx.AsyncClient
    web: Proc
    dispatcher: Proc

    async def customer_says(
        self, wa_id: str, n: int, *, name: str = "Anna Schmidt", text: str = ""
    ) -> events_pb2.Envelope:
        cm = events_pb2.CustomerMessage(
            phone_number_id=PNID,
            wa_id=wa_id,
            profile_name=name,
            wamid=f"wamid.{wa_id}.{n}",
            type="text",
            text=text or f"message {n}",
        )
        cm.sent_at.FromSeconds(int(time.time()))
        env = new_envelope(
            f"wa:{cm.wamid}", f"{PNID}:{wa_id}", events_pb2.PLATFORM_WHATSAPP, customer_message=cm
        )
        return env

    async def publish(self, envelopes: list[events_pb2.Envelope]) -> None:
        await self.producer.publish(topics_for(Flow.WA_TO_B24, self.kafka.topic_prefix).main, envelopes)

    async def sandbox_get(self, what: str) -> Any:
        """GET /_sandbox/portals/<member><what>; listings come wrapped as {"<what>": ...}."""
        resp = await self.http.get(f"{self.sandbox}/_sandbox/portals/{MEMBER}{what}")
        resp.raise_for_status()
        body = resp.json()
        return body[what.strip("/")] if what else body

    async def sandbox_post(self, what: str, body: dict[str, Any] | None = None) -> Any:
        resp = await self.http.post(f"{self.sandbox}/_sandbox/portals/{MEMBER}{what}", json=body or {})
        return resp.json()

    async def chats(self, wa_prefix: str) -> dict[str, dict[str, Any]]:
        """Chats of customers whose wa_id starts with `wa_prefix`, by external chat id. Chat ids are opaque;
        the stand-in's external user id is the wa_id."""
        return {
            c["external_chat_id"]: c
            for c in await self.sandbox_get("/chats")
            if str((c.get("user") or {}).get("id", "")).startswith(wa_prefix)
        }

    async def client_messages(self, wa_prefix: str) -> list[dict[str, Any]]:
        chats = await self.chats(wa_prefix)
        return [m for c in chats.values() for m in c["messages"] if m["direction"] == "client"]

    async def rest(self, method: str, params: dict[str, Any]) -> Any:
        token = (await self.sandbox_get(""))["access_token"]
        resp = await self.http.post(f"{self.sandbox}/rest/{method}", json={**params, "auth": token})
        resp.raise_for_status()
        return resp.json()["result"]


@pytest.fixture(scope="module")
async def stack(
    sandbox_bitrix: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("stack")
    async with httpx.AsyncClient(timeout=15) as http:
        (await http.post(f"{sandbox_bitrix}/_sandbox/reset")).raise_for_status()
        portal = (await http.get(f"{sandbox_bitrix}/_sandbox/portals/{MEMBER}")).json()
        tk = FakeTokenKeeper(sandbox_bitrix, "local.sandbox.app", "sandbox-client-secret")
        tk.add(
            Portal(
                MEMBER,
                "sandbox-app-token",
                access_token=portal["access_token"],
                refresh_token=portal["refresh_token"],
                client_endpoint=portal["client_endpoint"],
                domain=portal["domain"],
            )
        )
        fakes = await start_fakes(tk=tk)
        fakes.mapper.bind(PNID, MEMBER, LINE)
        prefix = f"zt{uuid.uuid4().hex[:10]}"
        kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix)
        await ensure_topics(kafka, [t for flow in Flow for t in topics_for(flow, prefix).all()], 3)
        web_port, ops_port = free_port(), free_port()
        common = {
            "ZAPTRIX_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "ZAPTRIX_KAFKA_TOPIC_PREFIX": prefix,
            "ZAPTRIX_ALLOW_INSECURE_HTTP": "true",
            "ZAPTRIX_EGRESS_ALLOW_NETWORKS": '["127.0.0.1/32"]',  # the local stand-ins only
            "ZAPTRIX_ENVIRONMENT": "test",
            **fakes.env(),
        }
        web = start_process(
            [console_script("bitrix-ingress-web")],
            {
                **common,
                "ZAPTRIX_WEB_PORT": str(web_port),
                "ZAPTRIX_PUBLIC_BASE_URL": f"http://127.0.0.1:{web_port}",
                # Installs are verified with the stand-in's OAuth server, for the stand-in's app.
                "ZAPTRIX_BITRIX_CLIENT_ID": "local.sandbox.app",
                "ZAPTRIX_BITRIX_CLIENT_SECRET": "sandbox-client-secret",
                "ZAPTRIX_BITRIX_OAUTH_SERVER_ENDPOINT": f"{sandbox_bitrix}/oauth/rest/",
                "ZAPTRIX_BITRIX_OAUTH_URL": f"{sandbox_bitrix}/oauth/token/",
                # The settings page's health checks: nothing listens there (never the real Graph API).
                "ZAPTRIX_GRAPH_API_BASE_URL": f"http://127.0.0.1:{free_port()}",
                "ZAPTRIX_META_WEBHOOK_URL": f"http://127.0.0.1:{free_port()}/webhooks/meta",
            },
            tmp / "web.log",
        )
        dispatcher = start_process(
            [console_script("bitrix-dispatcher")],
            {
                **common,
                "ZAPTRIX_METRICS_PORT": str(ops_port),
                "ZAPTRIX_RETRY_BASE_S": "0.5",
                "ZAPTRIX_BITRIX_OVERLOAD_WAIT_S": str(OVERLOAD_WAIT_S),
                **NO_RECONCILER,
            },
            tmp / "dispatcher.log",
        )
        producer = EventProducer(kafka, client_id="test")
        await producer.start()
        web_url = f"http://127.0.0.1:{web_port}"
        try:
            await wait_http(f"{web_url}/ready", web, ok=lambda s: s == 200)
            await wait_http(f"http://127.0.0.1:{ops_port}/ready", dispatcher, ok=lambda s: s == 200)
            await http.post(
                f"{sandbox_bitrix}/_sandbox/config",
                json={
                    "outbound_url": f"{web_url}/webhooks/bitrix24/outbound",
                    "install_url": f"{web_url}/webhooks/bitrix24/install",
                },
            )
            yield Stack(
                sandbox_bitrix,
                web_url,
                f"http://127.0.0.1:{ops_port}",
                fakes,
                producer,
                kafka,
                http,
                web,
                dispatcher,
            )
        finally:
            await producer.stop()
            await asyncio.gather(web.astop(), dispatcher.astop())
            await fakes.server.stop(None)


async def test_install_registers_the_connector_and_binds_events(stack: Stack) -> None:
    # An earlier uninstall scheduled the portal's data for removal (mapper retention): the install cancels it.
    stack.fakes.mapper.uninstalled[MEMBER] = datetime.now(UTC) - timedelta(days=3)
    for attempt in range(2):  # idempotent: a second install changes nothing and still succeeds
        resp = await stack.sandbox_post("/install")
        assert MEMBER not in stack.fakes.mapper.uninstalled
        assert resp["gateway_status"] == 200, (resp, stack.web.log()[-3000:])
        upsert = stack.fakes.token_keeper.upserts[-1]
        assert upsert.member_id == MEMBER and upsert.application_token == "sandbox-app-token"
        assert upsert.access_token and upsert.refresh_token and upsert.client_endpoint.endswith("/rest/")
        portal = await stack.sandbox_get("")
        handlers = {(b["event"].upper(), b["handler"]) for b in portal["bindings"]}
        outbound = f"{stack.web_url}/webhooks/bitrix24/outbound"
        for event in (
            "ONIMCONNECTORMESSAGEADD",
            "ONIMCONNECTORMESSAGEUPDATE",
            "ONIMCONNECTORMESSAGEDELETE",
            "ONIMCONNECTORSTATUSDELETE",
            "ONIMCONNECTORLINEDELETE",
        ):
            assert (event, outbound) in handlers, (attempt, handlers)
        assert ("ONAPPUNINSTALL", f"{stack.web_url}/webhooks/bitrix24/install") in handlers
        offline = [b["event"] for b in portal["bindings"] if b["offline"]]
        assert offline == ["ONIMCONNECTORMESSAGEADD"], portal["bindings"]  # the reconciler's queue
        assert len(portal["bindings"]) == 9
        assert portal["connectors"]["zaptrix_whatsapp"]["name"] == "WhatsApp (Zaptrix)"
        # WhatsApp cannot edit or delete a sent message, and CRM mailings would fail outside the window.
        flags = portal["connectors"]["zaptrix_whatsapp"]["flags"]
        assert not (flags["EDIT_INTERNAL_MESSAGES"] or flags["DEL_INTERNAL_MESSAGES"] or flags["NEWSLETTER"])
        assert flags["NEED_SIGNATURE"] and not flags["CHAT_GROUP"]
    assert len(stack.fakes.token_keeper.upserts) == 2


async def test_300_messages_at_100_per_second_stay_within_the_portal_limit(stack: Stack) -> None:
    before = await stack.sandbox_get("/stats")
    customers = [f"49150{c:03d}" for c in range(30)]
    envelopes = [await stack.customer_says(w, n) for n in range(10) for w in customers]
    started = time.monotonic()
    for i in range(0, 300, 10):  # 100 messages/s
        await stack.publish(envelopes[i : i + 10])
        await asyncio.sleep(0.1)
    produced = time.monotonic()

    async def all_delivered() -> bool:
        return len(await stack.client_messages("49150")) >= 300

    await eventually(all_delivered, timeout_s=20, interval_s=0.1)
    delivered = time.monotonic()
    stats = await stack.sandbox_get("/stats")
    messages = await stack.client_messages("49150")
    assert len(messages) == 300 and stats["duplicate_messages"] == before["duplicate_messages"]
    assert stats["rate_limited_count"] == before["rate_limited_count"] == 0
    assert stats["max_requests_in_any_second"] <= 12  # our pacer: burst 10, then 2/s
    calls = (await stack.sandbox_get("/requests"))[before["requests_total"] :]
    requests = sum(
        1 for r in calls if r.get("via") != "batch"
    )  # HTTP requests; batch sub-calls are listed too
    sends = [r for r in calls if r["method"] == "imconnector.send.messages"]
    assert requests <= 20, requests  # CRM look-ups/creations for 30 new customers + packed sends
    assert len(sends) < 300 / 5, len(sends)  # many messages per call
    chats = await stack.chats("49150")
    assert len(chats) == 30
    for chat in chats.values():  # conversation order kept
        ids = [m["external_ids"][0] for m in chat["messages"] if m["direction"] == "client"]
        wa_id = chat["user"]["id"]
        assert ids == [f"wamid.{wa_id}.{n}" for n in range(10)]
    contacts = await stack.sandbox_get("/contacts")
    assert sum(1 for c in contacts if any("49150" in p["VALUE"] for p in c.get("PHONE", []))) == 30
    print(
        f"\n300 messages at 100/s: {requests} REST requests, drained {delivered - produced:.2f}s after the last "
        f"was produced, {300 / (delivered - started):.0f} messages/s end to end, "
        f"max {stats['max_requests_in_any_second']} requests in any second"
    )


async def test_expired_token_mid_flow(stack: Stack) -> None:
    await stack.publish([await stack.customer_says("4916000001", 1)])
    await eventually(lambda: _count(stack, "4916000001", 1), timeout_s=10)
    before = await stack.sandbox_get("/stats")
    rejections = len(stack.fakes.token_keeper.rejections)
    assert (await stack.sandbox_post("/expire-token"))["expired"] >= 1
    await stack.publish([await stack.customer_says("4916000001", n) for n in range(2, 6)])
    await eventually(lambda: _count(stack, "4916000001", 5), timeout_s=10)
    after = await stack.sandbox_get("/stats")
    assert after["refresh_count"] - before["refresh_count"] == 1
    assert len(stack.fakes.token_keeper.rejections) - rejections == 1
    assert stack.fakes.token_keeper.rejections[-1].error == "expired_token"


async def test_send_messages_over_its_operating_time_waits_for_the_reset(stack: Stack) -> None:
    """imconnector.send.messages over its operating-time limit (429 OPERATION_TIME_LIMIT, B24 §6): after one
    refusal the dispatcher asks the blocked method no more before operating_reset_at, whatever arrives
    meanwhile, then delivers each message once."""
    send = "imconnector.send.messages"
    config = f"{stack.sandbox}/_sandbox/config"
    before = await stack.sandbox_get("/stats")
    seen = len(await stack.sandbox_get("/requests"))
    knobs = ("operating_window_s", "operating_limit_s", "operating_cost_s")
    restore = {k: v for k, v in (await stack.http.post(config, json={})).json().items() if k in knobs}
    # A 20 s window of 2 s baskets (time for a second customer to write during the block); one call of the
    # app's own (the dispatcher's app) costs 5 s of a 1 s limit.
    await stack.http.post(
        config, json={"operating_window_s": 20, "operating_limit_s": 1, "operating_cost_s": {send: 5}}
    )
    try:
        token = (await stack.sandbox_get(""))["access_token"]
        message = {"id": "wamid.warmup", "date": str(int(time.time())), "text": "warm-up"}
        params = {"CONNECTOR": "zaptrix_whatsapp", "LINE": LINE, "auth": token}
        params["MESSAGES"] = [{"user": {"id": "4913300000000"}, "message": message, "chat": {"id": "warmup"}}]
        warmup = await stack.http.post(f"{stack.sandbox}/rest/{send}", json=params)
        assert warmup.status_code == 200, warmup.text
        reset_at = warmup.json()["time"]["operating_reset_at"]
        await stack.http.post(config, json={"operating_cost_s": {}})  # the block stays until reset_at
        customers = ("4913300000001", "4913300000002")
        await stack.publish([await stack.customer_says(w, n) for n in range(3) for w in customers[:1]])

        async def refused() -> bool:
            calls = (await stack.sandbox_get("/requests"))[seen:]
            return any(r["method"] == send and r.get("error") == "OPERATION_TIME_LIMIT" for r in calls)

        await eventually(refused, timeout_s=10)
        assert time.time() < reset_at - 2, "the block lifted before the second customer wrote"
        # Written while the method is blocked: not offered to it before operating_reset_at.
        await stack.publish([await stack.customer_says(customers[1], n) for n in range(3)])
        await eventually(lambda: _count(stack, "49133000000", 7), timeout_s=40)
        delivered_at = time.time()
    finally:
        await stack.http.post(config, json=restore)
    calls = (await stack.sandbox_get("/requests"))[seen:]
    blocked = [r for r in calls if r["method"] == send and r.get("error") == "OPERATION_TIME_LIMIT"]
    print(
        f"\n{len(blocked)} blocked calls; delivered {delivered_at - reset_at:.1f} s after operating_reset_at"
    )
    # One refusal is enough: until operating_reset_at the method is not asked again (no retry in place, and
    # the second customer's messages wait without a request).
    assert len(blocked) == 1, [round(r["at"] - reset_at, 2) for r in blocked]
    chats = await stack.chats("49133000000")
    for wa_id in customers:
        (chat,) = [c for c in chats.values() if c["user"]["id"] == wa_id]
        client = [m for m in chat["messages"] if m["direction"] == "client"]
        assert [m["external_ids"][0] for m in client] == [f"wamid.{wa_id}.{n}" for n in range(3)]
        assert all(m["received_at"] >= reset_at for m in client)
    assert (await stack.sandbox_get("/stats"))["duplicate_messages"] == before["duplicate_messages"]


async def test_a_portal_under_overload_limit_is_asked_once_per_wait(stack: Stack) -> None:
    """OVERLOAD_LIMIT (Bitrix24's manual block of the app's REST API on a portal): a refused request is not
    retried in place, and nothing is asked of the portal until ZAPTRIX_BITRIX_OVERLOAD_WAIT_S has passed,
    whatever arrives meanwhile; then one request looks again. Once lifted, each message is delivered once."""
    config = f"{stack.sandbox}/_sandbox/config"
    before = await stack.sandbox_get("/stats")
    seen = len(await stack.sandbox_get("/requests"))

    async def refusals() -> list[float]:
        calls = (await stack.sandbox_get("/requests"))[seen:]
        return [r["at"] for r in calls if r.get("error") == "OVERLOAD_LIMIT"]

    await stack.http.post(config, json={"overloaded_portals": [MEMBER]})
    try:
        await stack.publish([await stack.customer_says("4913400000001", 0)])
        await eventually(refusals, timeout_s=10)
        # Written during the block: no request of their own.
        await stack.publish([await stack.customer_says("4913400000002", n) for n in range(2)])

        async def looked_again() -> bool:
            return len(await refusals()) >= 2

        await eventually(looked_again, timeout_s=OVERLOAD_WAIT_S + 10)  # after the wait, still blocked
    finally:
        await stack.http.post(config, json={"overloaded_portals": []})
    refused = await refusals()
    await eventually(lambda: _count(stack, "49134000000", 3), timeout_s=40)
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(refused)]
    print(f"\n{len(refused)} refused requests, {gaps} s apart")
    assert all(gap >= OVERLOAD_WAIT_S - 0.5 for gap in gaps), gaps
    assert (await stack.sandbox_get("/stats"))["duplicate_messages"] == before["duplicate_messages"]


async def _count(stack: Stack, wa_id: str, n: int) -> bool:
    return len(await stack.client_messages(wa_id)) >= n


async def test_first_contact_and_returning_customer(stack: Stack) -> None:
    existing = await stack.rest(
        "crm.contact.add",
        {"fields": {"NAME": "Known", "PHONE": [{"VALUE": "+4917700000002", "VALUE_TYPE": "WORK"}]}},
    )
    await stack.publish(
        [await stack.customer_says(w, n) for n in range(3) for w in ("4917700000001", "4917700000002")]
    )
    await eventually(lambda: _count(stack, "49177", 6), timeout_s=10)
    contacts = await stack.sandbox_get("/contacts")

    def with_phone(digits: str) -> list[dict[str, Any]]:
        return [c for c in contacts if any(digits in p["VALUE"] for p in c.get("PHONE", []))]

    (new,) = with_phone("4917700000001")
    (old,) = with_phone("4917700000002")
    assert str(old["ID"]) == str(existing)
    assert new["NAME"] == "Anna" and new["LAST_NAME"] == "Schmidt"
    conv = stack.fakes.mapper.by_customer(PNID, "4917700000002")
    assert conv is not None and conv.bitrix_contact_id == str(existing)


async def test_a_redelivered_message_is_not_posted_twice(stack: Stack) -> None:
    env = await stack.customer_says("4918800000001", 1)
    await stack.publish([env])
    await eventually(lambda: _count(stack, "4918800000001", 1), timeout_s=10)
    await stack.publish([env, env])
    await asyncio.sleep(1.0)  # a redelivery would be handled within a poll or two
    assert len(await stack.client_messages("4918800000001")) == 1
    assert (await stack.sandbox_get("/stats"))["duplicate_messages"] == 0


async def test_operator_reply_and_its_receipts(stack: Stack) -> None:
    wa_id = "4919900000001"
    await stack.publish([await stack.customer_says(wa_id, 1, text="Hallo, ist das Paket unterwegs?")])
    await eventually(lambda: _count(stack, wa_id, 1), timeout_s=10)
    (chat,) = await stack.chats(wa_id)  # the chat id the gateway gave Bitrix24 (opaque)
    sent = await stack.sandbox_post(
        "/operator-messages", {"chat_id": chat, "text": "Ja, [b]heute[/b]!", "operator": "Klaus Weber"}
    )
    assert sent["gateway_status"] == 200, sent
    im = sent["im"]

    consumer = AIOKafkaConsumer(
        topics_for(Flow.B24_TO_WA, stack.kafka.topic_prefix).main,
        bootstrap_servers=stack.kafka.bootstrap_servers,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        found: list[events_pb2.Envelope] = []
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and not found:
            for recs in (await consumer.getmany(timeout_ms=200)).values():
                for rec in recs:
                    env = decode(rec.value, rec.headers)
                    if env.event_id == f"b24:{MEMBER}:{im['message_id']}":
                        assert rec.key == f"{PNID}:{wa_id}".encode()
                        found.append(env)
    finally:
        await consumer.stop()
    (env,) = found
    om = env.operator_message
    assert om.text_bbcode == "[b]Klaus Weber:[/b][br] Ja, [b]heute[/b]!" and om.external_chat_id == chat
    assert (om.bitrix_chat_id, om.bitrix_message_id) == (im["chat_id"], im["message_id"])

    # The meta dispatcher would now send it and link the wamid; Meta reports delivery.
    conv = stack.fakes.mapper.by_customer(PNID, wa_id)
    assert conv is not None and conv.bitrix_chat_id == im["chat_id"]
    stack.fakes.mapper.links["wamid.out.1"] = mapper_pb2.MessageLink(
        conversation_id=conv.id,
        direction=mapper_pb2.DIRECTION_OUTBOUND,
        wamid="wamid.out.1",
        member_id=MEMBER,
        bitrix_message_id=im["message_id"],
        bitrix_chat_id=im["chat_id"],
    )
    st = events_pb2.WhatsAppStatus(phone_number_id=PNID, wa_id=wa_id, wamid="wamid.out.1", status="delivered")
    st.at.FromSeconds(int(time.time()))
    await stack.publish(
        [
            new_envelope(
                "wa-status:wamid.out.1:delivered",
                f"{PNID}:{wa_id}",
                events_pb2.PLATFORM_WHATSAPP,
                whatsapp_status=st,
            )
        ]
    )

    async def delivered() -> bool:
        chats = await stack.chats(wa_id)
        ops = [m for m in chats[chat]["messages"] if m["direction"] == "operator"]
        return bool(ops and ops[0]["delivered"] and ops[0]["external_ids"] == ["wamid.out.1"])

    await eventually(delivered, timeout_s=10)

    async def recorded() -> bool:  # the mapper is told right after Bitrix24 answered
        return stack.fakes.mapper.links["wamid.out.1"].bitrix_status == "delivered"

    await eventually(recorded, timeout_s=5)

    # The operator edits it: with a connector registered before edits were switched off, the update event
    # carries the wamid Bitrix24 stored as CONNECTOR_MID; with ours (install), Bitrix24 offers no edit.
    edit = await stack.sandbox_post(f"/operator-messages/{im['message_id']}/update", {"text": "Ja, morgen!"})
    flags = (await stack.sandbox_get(""))["connectors"]["zaptrix_whatsapp"]["flags"]
    if flags["EDIT_INTERNAL_MESSAGES"]:
        assert edit["gateway_status"] == 200, edit
    else:
        assert "EDIT_INTERNAL_MESSAGES=N" in edit["error"], edit

    # A later reply fails on WhatsApp: the operator sees why, in the chat.
    sent2 = await stack.sandbox_post("/operator-messages", {"chat_id": chat, "text": "Noch da?"})
    stack.fakes.mapper.links["wamid.out.2"] = mapper_pb2.MessageLink(
        conversation_id=conv.id,
        direction=mapper_pb2.DIRECTION_OUTBOUND,
        wamid="wamid.out.2",
        member_id=MEMBER,
        bitrix_message_id=sent2["im"]["message_id"],
        bitrix_chat_id=sent2["im"]["chat_id"],
    )
    failed = events_pb2.WhatsAppStatus(
        phone_number_id=PNID,
        wa_id=wa_id,
        wamid="wamid.out.2",
        status="failed",
        errors=[events_pb2.GraphError(code=131047, title="Re-engagement message")],
    )
    await stack.publish(
        [
            new_envelope(
                "wa-status:wamid.out.2:failed",
                f"{PNID}:{wa_id}",
                events_pb2.PLATFORM_WHATSAPP,
                whatsapp_status=failed,
            )
        ]
    )

    async def notice() -> list[dict[str, Any]]:
        chats = await stack.chats(wa_id)
        return [m for m in chats[chat]["messages"] if m["direction"] == "system"]

    # A system message in the operator's chat (im.message.add SYSTEM=Y), not words of the customer.
    (shown,) = await eventually(notice, timeout_s=10)
    assert shown["text"].startswith("⚠️ Zaptrix:") and "24 hours" in shown["text"]
    assert not [m for m in await stack.client_messages(wa_id) if "Zaptrix" in m["text"]]
    (call,) = [r for r in await stack.sandbox_get("/requests") if r["method"] == "im.message.add"]
    assert call["status"] == 200

    async def failed_recorded() -> bool:  # the link is updated once Bitrix24 took the notice, not before
        return stack.fakes.mapper.links["wamid.out.2"].bitrix_status == "failed"

    await eventually(failed_recorded, timeout_s=5)


def _status_env(wa_id: str, wamid: str, status: str) -> events_pb2.Envelope:
    st = events_pb2.WhatsAppStatus(phone_number_id=PNID, wa_id=wa_id, wamid=wamid, status=status)
    st.at.FromSeconds(int(time.time()))
    return new_envelope(
        f"wa-status:{wamid}:{status}", f"{PNID}:{wa_id}", events_pb2.PLATFORM_WHATSAPP, whatsapp_status=st
    )


async def test_each_receipt_reaches_bitrix24_once_and_as_what_it_is(stack: Stack) -> None:
    """delivered and read back to back (one poll batch, adjacent batches, read first): per operator
    message exactly one imconnector.send.status.delivery and one .reading, in that order."""
    wa_id = "4917300000001"
    await stack.publish([await stack.customer_says(wa_id, 1)])
    await eventually(lambda: _count(stack, wa_id, 1), timeout_s=10)
    chat = next(iter(await stack.chats(wa_id)))
    conv = stack.fakes.mapper.by_customer(PNID, wa_id)
    assert conv is not None
    cases = ("same-batch", "adjacent", "read-first", "read-first-same-batch", "sentinel")
    message_ids: dict[str, str] = {}
    for case in cases:
        sent = await stack.sandbox_post("/operator-messages", {"chat_id": chat, "text": case})
        wamid = f"wamid.rcpt.{case}"
        message_ids[wamid] = sent["im"]["message_id"]
        stack.fakes.mapper.links[wamid] = mapper_pb2.MessageLink(
            conversation_id=conv.id,
            direction=mapper_pb2.DIRECTION_OUTBOUND,
            wamid=wamid,
            member_id=MEMBER,
            bitrix_message_id=sent["im"]["message_id"],
            bitrix_chat_id=sent["im"]["chat_id"],
        )

    def env(case: str, status: str) -> events_pb2.Envelope:
        return _status_env(wa_id, f"wamid.rcpt.{case}", status)

    await stack.publish([env("same-batch", "delivered"), env("same-batch", "read")])
    await stack.publish([env("adjacent", "delivered")])
    await stack.publish([env("adjacent", "read")])
    await stack.publish([env("read-first", "read")])
    await stack.publish([env("read-first", "delivered")])
    await stack.publish([env("read-first-same-batch", "read"), env("read-first-same-batch", "delivered")])
    # The same conversation is one partition, handled in order: once the last status is in, the others are.
    await stack.publish([env("sentinel", "delivered")])

    async def sentinel() -> bool:
        calls = await stack.sandbox_get("/status-calls")
        return any(c["message_id"] == message_ids["wamid.rcpt.sentinel"] for c in calls)

    await eventually(sentinel, timeout_s=15)
    calls = await stack.sandbox_get("/status-calls")
    per_message = {
        wamid: [c["method"] for c in calls if c["message_id"] == mid] for wamid, mid in message_ids.items()
    }
    expected = {f"wamid.rcpt.{case}": ["delivery", "reading"] for case in cases[:-1]}
    expected["wamid.rcpt.sentinel"] = ["delivery"]
    assert per_message == expected
    assert all(c["matched"] for c in calls if c["message_id"] in message_ids.values())


async def test_wrong_application_token_from_the_portal_is_refused(stack: Stack) -> None:
    wa_id = "4919900000002"
    await stack.publish([await stack.customer_says(wa_id, 1)])
    await eventually(lambda: _count(stack, wa_id, 1), timeout_s=10)
    (chat,) = await stack.chats(wa_id)
    bad = await stack.sandbox_post(
        "/operator-messages", {"chat_id": chat, "text": "x", "wrong_application_token": True}
    )
    assert bad["gateway_status"] == 401
    for variant in ({"omit_tokens": True}, {"use_data_key": True}):
        ok = await stack.sandbox_post("/operator-messages", {"chat_id": chat, "text": "y", **variant})
        assert ok["gateway_status"] == 200, (variant, ok)


async def test_dispatcher_metrics(stack: Stack) -> None:
    # Its own delivery first: the call counters exist once a call was made (not only after other tests).
    await stack.publish([await stack.customer_says("4919900000001", 1)])
    await eventually(lambda: _count(stack, "4919900000001", 1), timeout_s=10)
    metrics = (await stack.http.get(f"{stack.dispatcher_ops}/metrics")).text
    assert "zaptrix_bitrix_messages_per_call_bucket" in metrics
    assert re.search(
        r'zaptrix_external_api_calls_total\{method="[\w.]+",outcome="ok",platform="bitrix24"\} [1-9]', metrics
    )
    assert "zaptrix_kafka_consumer_lag" in metrics


async def test_settings_page_activates_a_line(stack: Stack) -> None:
    portal = await stack.sandbox_get("")
    form = {
        "member_id": MEMBER,
        "AUTH_ID": portal["access_token"],
        "DOMAIN": portal["domain"],
        "PLACEMENT": "SETTING_CONNECTOR",
        "PLACEMENT_OPTIONS": f'{{"CONNECTOR":"zaptrix_whatsapp","LINE":"{LINE}","ACTIVE_STATUS":"1"}}',
    }
    url = f"{stack.web_url}/webhooks/bitrix24/settings"
    resp = await stack.http.post(url, data={**form, "action": "deactivate"})
    assert resp.status_code == 200 and 'data-active="false"' in resp.text, resp.text
    assert "zaptrix_whatsapp" not in (await stack.sandbox_get(""))["active"].get(str(LINE), [])
    resp = await stack.http.post(url, data=form)
    assert resp.status_code == 200, resp.text
    assert "text/html" in resp.headers["content-type"] and 'data-active="true"' in resp.text
    assert f"Open Line {LINE}" in resp.text and "frame-ancestors" in resp.headers["content-security-policy"]
    assert PNID in resp.text  # the numbers bound to this line
    portal = await stack.sandbox_get("")
    assert "zaptrix_whatsapp" in portal["active"][str(LINE)]
    (data,) = [d for d in portal["connector_data"] if d["line"] == LINE]
    assert data["data"]["ID"] == f"zaptrix_whatsapp_line{LINE}" and data["data"]["URL"] == stack.web_url
    bad = await stack.http.post(url, data={**form, "AUTH_ID": "forged"})
    assert bad.status_code == 401
    other = await stack.http.post(
        url, data={**form, "PLACEMENT_OPTIONS": '{"CONNECTOR":"telegrambot","LINE":"1"}'}
    )
    assert other.status_code == 400


async def test_settings_page_refuses_another_apps_token(stack: Stack) -> None:
    """L11: a genuine token of the portal, but of another app, cannot (de)activate lines or list numbers."""
    other = await stack.sandbox_post("/tokens", {"client_id": "local.other.app"})
    calls = len(await stack.sandbox_get("/requests"))
    form = {
        "member_id": MEMBER,
        "AUTH_ID": other["access_token"],
        "REFRESH_ID": other["refresh_token"],
        "PLACEMENT": "SETTING_CONNECTOR",
        "PLACEMENT_OPTIONS": f'{{"CONNECTOR":"zaptrix_whatsapp","LINE":"{LINE}","ACTIVE_STATUS":"1"}}',
        "action": "deactivate",
    }
    resp = await stack.http.post(f"{stack.web_url}/webhooks/bitrix24/settings", data=form)
    assert resp.status_code == 403, resp.text
    assert PNID not in resp.text and "local.other.app" not in resp.text
    assert len(await stack.sandbox_get("/requests")) == calls  # nothing called on the portal


async def test_ui_install_page_and_a_forged_install(stack: Stack) -> None:
    portal = await stack.sandbox_get("")
    upserts = len(stack.fakes.token_keeper.upserts)
    host = stack.sandbox.removeprefix("http://")
    page = await stack.http.post(
        f"{stack.web_url}/webhooks/bitrix24/install?DOMAIN={host}&PROTOCOL=0&LANG=en&APP_SID=abc",
        data={
            "AUTH_ID": portal["access_token"],
            "AUTH_EXPIRES": "3600",
            "REFRESH_ID": "r",
            "member_id": MEMBER,
        },
    )
    assert page.status_code == 200, page.text
    assert "BX24.installFinish()" in page.text
    assert (
        len(stack.fakes.token_keeper.upserts) == upserts
    )  # an admin opening the app does not replace the tokens
    forged = await stack.http.post(
        f"{stack.web_url}/webhooks/bitrix24/install",
        data={
            "event": "ONAPPINSTALL",
            "auth[member_id]": MEMBER,
            "auth[access_token]": "forged",
            "auth[refresh_token]": "forged",
            "auth[application_token]": "forged",
            "auth[client_endpoint]": portal["client_endpoint"],
            "auth[domain]": portal["domain"],
        },
    )
    assert forged.status_code == 401
    assert len(stack.fakes.token_keeper.upserts) == upserts


async def test_an_admins_install_takes_the_endpoint_from_the_oauth_server(stack: Stack) -> None:
    """H1: even a genuine administrator's install never stores the endpoint or expiry the request names."""
    portal = await stack.sandbox_get("")
    admin = await stack.sandbox_post("/tokens", {"user_id": 1})
    resp = await stack.http.post(
        f"{stack.web_url}/webhooks/bitrix24/install",
        data={
            "event": "ONAPPINSTALL",
            "auth[member_id]": MEMBER,
            "auth[access_token]": admin["access_token"],
            "auth[refresh_token]": admin["refresh_token"],
            "auth[application_token]": "sandbox-app-token",
            "auth[client_endpoint]": "https://evil.example/rest/",
            "auth[server_endpoint]": "https://evil.example/oauth/",
            "auth[domain]": "evil.example",
            "auth[expires]": "99999999999",
        },
    )
    assert resp.status_code == 200, resp.text
    upsert = stack.fakes.token_keeper.upserts[-1]
    assert upsert.client_endpoint == portal["client_endpoint"] and "evil" not in upsert.domain
    assert "evil" not in upsert.server_endpoint
    assert upsert.access_expires_at.seconds <= time.time() + 3600


async def removed_events(stack: Stack, prefix: str) -> list[events_pb2.Envelope]:
    consumer = AIOKafkaConsumer(
        topics_for(Flow.B24_TO_WA, stack.kafka.topic_prefix).main,
        bootstrap_servers=stack.kafka.bootstrap_servers,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    found: list[events_pb2.Envelope] = []
    try:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and not found:
            for recs in (await consumer.getmany(timeout_ms=200)).values():
                found += [
                    e for e in (decode(r.value, r.headers) for r in recs) if e.event_id.startswith(prefix)
                ]
    finally:
        await consumer.stop()
    return found


async def test_line_and_connector_removal_are_relayed(stack: Stack) -> None:
    """Near the end: the stand-in deactivates the connector on the line."""
    for what, prefix in (("/status-delete", "b24-status-del:"), ("/line-delete", "b24-line-del:")):
        resp = await stack.sandbox_post(what)
        assert resp["gateway_status"] == 200, resp
        (removed, *_) = await removed_events(stack, prefix)
        assert (removed.line_removed.member_id, removed.line_removed.line_id) == (MEMBER, LINE)
        assert removed.line_removed.connector_id == "zaptrix_whatsapp"


async def test_uninstall_is_relayed(stack: Stack) -> None:
    """Last: the stand-in removes the connector and the bindings."""
    resp = await stack.sandbox_post("/uninstall")
    assert resp["gateway_status"] == 200, resp
    (removed, *_) = await removed_events(stack, "b24-uninstall:")
    assert removed.line_removed.member_id == MEMBER and removed.line_removed.line_id == 0
