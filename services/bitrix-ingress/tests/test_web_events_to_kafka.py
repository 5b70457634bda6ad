"""bitrix-ingress-web as a real process: Bitrix24 events in, envelopes on real Kafka out.

gRPC dependencies are in-test fakes on a real grpc.aio server; Kafka is ZAPTRIX_TEST_KAFKA.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import string
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from zaptrix.kafka import Flow, decode, topics_for
from zaptrix.kafka.admin import ensure_topics
from zaptrix.settings import KafkaSettings
from zaptrix.v1 import events_pb2
from zaptrix_testing.fakes import GrpcFakes, Portal, start_fakes
from zaptrix_testing.ports import free_port
from zaptrix_testing.processes import Proc, console_script, start_process, wait_http
from zaptrix_testing.waiting import eventually

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@dataclass
class Web:
    url: str
    proc: Proc
    fakes: GrpcFakes
    topic: str
    bootstrap: str
    http: httpx.AsyncClient

    async def post(
        self,
        pairs: list[tuple[str, str]] | bytes,
        path: str = "/webhooks/bitrix24/outbound",
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        body = pairs if isinstance(pairs, bytes) else urlencode(pairs).encode()
        return await self.http.post(
            self.url + path,
            content=body,
            headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})},
        )

    async def records(self, match: str, count: int, within_s: float = 8.0) -> list[ConsumerRecord]:
        """Records of this topic whose event id contains `match` (tests share one topic)."""
        consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        got: list[ConsumerRecord] = []

        async def poll(timeout_ms: int) -> None:
            for recs in (await consumer.getmany(timeout_ms=timeout_ms)).values():
                got.extend(r for r in recs if match in dict(r.headers)["zaptrix-event-id"].decode())

        try:
            deadline = asyncio.get_running_loop().time() + within_s
            while asyncio.get_running_loop().time() < deadline and len(got) < count:
                await poll(200)
            # Read up to the end of every partition, so "nothing more" is a real observation.
            partitions = [
                TopicPartition(self.topic, p) for p in consumer.partitions_for_topic(self.topic) or []
            ]
            ends = await consumer.end_offsets(partitions)

            async def behind() -> bool:
                return any([await consumer.position(tp) < end for tp, end in ends.items()])

            while await behind():
                await poll(200)
        finally:
            await consumer.stop()
        return got


def start_web(
    tmp_path: Path, fakes: GrpcFakes, bootstrap: str, prefix: str, **extra: str
) -> tuple[str, Proc]:
    port = free_port()
    env = {
        "ZAPTRIX_WEB_PORT": str(port),
        "ZAPTRIX_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "ZAPTRIX_KAFKA_TOPIC_PREFIX": prefix,
        "ZAPTRIX_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "ZAPTRIX_ALLOW_INSECURE_HTTP": "true",
        "ZAPTRIX_EGRESS_ALLOW_NETWORKS": '["127.0.0.1/32"]',  # the local stand-ins only
        "ZAPTRIX_ENVIRONMENT": "test",
        "ZAPTRIX_VERIFY_CACHE_TTL_S": "0",
        **fakes.env(),
        **extra,
    }
    proc = start_process([console_script("bitrix-ingress-web")], env, tmp_path / f"web-{port}.log")
    return f"http://127.0.0.1:{port}", proc


@pytest.fixture(scope="module")
async def web(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> AsyncIterator[Web]:
    """One web process for the module (tests use distinct ids); its own fakes and topics."""
    fakes = await start_fakes()
    fakes.token_keeper.add(Portal("m1", "apptok"))
    fakes.mapper.bind("100", "m1", 7)
    # A chat id of the earlier derived form: such conversations keep working, for their own portal.
    fakes.mapper.add_conversation("100", "4917", "Anna").external_chat_id = "wa_100_4917"
    fakes.token_keeper.add(Portal("m2", "apptok-m2"))  # a second tenant with its own chat
    fakes.mapper.bind("200", "m2", 9)
    fakes.mapper.add_conversation("200", "4918", "Berta").external_chat_id = "wa_200_4918"
    prefix = f"zt{uuid.uuid4().hex[:10]}"
    await ensure_topics(
        KafkaSettings(bootstrap_servers=kafka_bootstrap), topics_for(Flow.B24_TO_WA, prefix).all(), 3
    )
    url, proc = start_web(tmp_path_factory.mktemp("web"), fakes, kafka_bootstrap, prefix)
    try:
        await wait_http(f"{url}/ready", proc, ok=lambda s: s == 200)
        async with httpx.AsyncClient(timeout=10) as http:
            yield Web(url, proc, fakes, topics_for(Flow.B24_TO_WA, prefix).main, kafka_bootstrap, http)
    finally:
        await proc.astop()
        await fakes.server.stop(None)


async def raw_post(url: str, body: bytes, traceparent: str) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (
        f"POST /webhooks/bitrix24/outbound HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n"
        f"traceparent: {traceparent}\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    response = await reader.read()
    writer.close()
    status_line, _, rest = response.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def message_add(
    app_token: str = "apptok",
    chat: str = "wa_100_4917",
    key: str = "MESSAGES",
    tokens: bool = True,
    message_id: str = "86497",
) -> list[tuple[str, str]]:
    p = f"data[{key}][0]"
    pairs = [
        ("event", "ONIMCONNECTORMESSAGEADD"),
        ("event_handler_id", "555"),
        ("data[CONNECTOR]", "zaptrix_whatsapp"),
        ("data[LINE]", "7"),
        (f"{p}[im][chat_id]", "1807"),
        (f"{p}[im][message_id]", message_id),
        (f"{p}[message][user_id]", "27"),
        (f"{p}[message][text]", "[b]Klaus Weber:[/b] [br]Guten Tag!"),
        (f"{p}[chat][id]", chat),
        ("ts", "1773759161"),
        ("auth[member_id]", "m1"),
        ("auth[application_token]", app_token),
        ("auth[domain]", "p.bitrix24.com"),
    ]
    if tokens:
        pairs += [("auth[access_token]", "access-xyz"), ("auth[expires_in]", "3600")]
    return pairs


async def test_operator_message_becomes_an_envelope_on_kafka(web: Web) -> None:
    traceparent = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
    # A raw request: an instrumented httpx (another test may have set up telemetry) would replace traceparent.
    status, body = await raw_post(web.url, urlencode(message_add(message_id="1001")).encode(), traceparent)
    assert status == 200, body
    assert json.loads(body)["events"] == 2
    records = await web.records("b24:m1:1001", 1) + (await web.records("b24-read:m1:wa_100_4917:", 1))[:1]
    assert len(records) == 2
    by_type = {}
    for rec in records:
        headers = dict(rec.headers)
        env = decode(rec.value, rec.headers)
        by_type[env.WhichOneof("kind")] = (rec, env, headers)
        assert rec.key == b"100:4917"  # the conversation key from the mapper
        assert headers["zaptrix-event-id"].decode() == env.event_id
        assert headers["zaptrix-schema-version"] == b"1"
        # The caller's trace context is not continued (security review L1): a new trace per request.
        traceparent_out = headers["traceparent"].decode()
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", traceparent_out)
        assert TRACE_ID not in traceparent_out
    rec, env, headers = by_type["operator_message"]
    assert headers["zaptrix-event-type"] == b"operator_message"
    assert env.event_id == "b24:m1:1001" and env.source == events_pb2.PLATFORM_BITRIX24
    om = env.operator_message
    assert (om.member_id, om.line_id, om.bitrix_chat_id, om.bitrix_message_id, om.external_chat_id) == (
        "m1",
        7,
        "1807",
        "1001",
        "wa_100_4917",
    )
    assert om.text_bbcode == "[b]Klaus Weber:[/b] [br]Guten Tag!"
    assert by_type["operator_read"][1].operator_read.external_chat_id == "wa_100_4917"


async def test_old_shape_without_tokens(web: Web) -> None:
    resp = await web.post(message_add(key="DATA", tokens=False, message_id="1002"))
    assert resp.status_code == 200, resp.text
    records = await web.records("b24:m1:1002", 1)
    assert [r.key for r in records] == [b"100:4917"]


def as_member(pairs: list[tuple[str, str]], member: str, token: str) -> list[tuple[str, str]]:
    values = {"auth[member_id]": member, "auth[application_token]": token}
    return [(k, values.get(k, v)) for k, v in pairs]


async def test_a_chat_the_portal_does_not_own_is_refused_and_nothing_is_produced(web: Web) -> None:
    # m2 uses its own chat first: the cached answer must not serve m1 afterwards.
    own = await web.post(as_member(message_add(chat="wa_200_4918", message_id="2001"), "m2", "apptok-m2"))
    assert own.status_code == 200, own.text
    for chat, mid in (("wa_200_4918", "2002"), ("wa_100_unknown", "2003")):  # another portal's, unknown
        resp = await web.post(message_add(chat=chat, message_id=mid))
        assert resp.status_code == 403, resp.text
        assert resp.json()["error"] == "the event names no chat of this portal"  # the same for both
    assert await web.records("b24:m1:2002", 1, within_s=0.5) == []
    assert await web.records("b24:m1:2003", 1, within_s=0.5) == []
    assert await web.records("b24-read:m1:wa_200_4918", 1, within_s=0.5) == []
    log = web.proc.log()
    refused = [line for line in log.splitlines() if "operator event refused" in line]
    assert refused and all('"level": "warning"' in line for line in refused), log[-2000:]
    assert "Guten Tag" not in "".join(refused)  # never the message text
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"{web.url}/metrics")).text
    found = re.search(
        r'zaptrix_cross_tenant_refusals_total\{kind="message",service="bitrix-ingress"\} (\d+)', metrics
    )
    assert found and int(found.group(1)) >= 2, metrics


async def test_a_mixed_event_keeps_the_portals_own_messages_and_refuses_the_others(web: Web) -> None:
    pairs = message_add(message_id="3001")
    p = "data[MESSAGES][1]"
    pairs += [
        (f"{p}[im][chat_id]", "1900"),
        (f"{p}[im][message_id]", "3002"),
        (f"{p}[message][text]", "an m2 customer"),
        (f"{p}[chat][id]", "wa_200_4918"),
    ]
    resp = await web.post(pairs)
    assert resp.status_code == 200, resp.text
    assert resp.json()["refused"] == 2  # the foreign message and its read
    assert [r.key for r in await web.records("b24:m1:3001", 1)] == [b"100:4917"]
    assert await web.records("b24:m1:3002", 1, within_s=0.5) == []


@pytest.mark.parametrize(("token", "member"), [("wrong", "m1"), ("apptok", "stranger"), ("", "m1")])
async def test_wrong_application_token_is_refused(web: Web, token: str, member: str) -> None:
    pairs = [
        (k, member if k == "auth[member_id]" else v)
        for k, v in message_add(app_token=token, message_id="1003")
    ]
    resp = await web.post(pairs)
    assert resp.status_code == 401
    assert await web.records(":1003", 1, within_s=0.5) == []


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (b"event=ONIMCONNECTORMESSAGEADD&auth[member_id]=m1&auth[application_token]=apptok", None),
        (b"data[MESSAGES][0][chat][id]=x&auth[member_id]=m1&auth[application_token]=apptok", None),
        (b"\xff\xfe\x00garbage", None),
        (b"a=%ff", None),
        (b"{}", "text/xml"),
        (b"[1,2]", "application/json"),
    ],
)
async def test_malformed_is_400_with_a_reason(web: Web, body: bytes, ctype: str | None) -> None:
    headers = {"Content-Type": ctype} if ctype else {}
    resp = await web.post(body, headers=headers)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]


async def test_fuzzed_bodies_never_get_a_500(web: Web) -> None:
    rng = random.Random(42)
    valid = message_add(message_id="1004")
    statuses: set[int] = set()
    for i in range(150):
        if i % 3 == 0:
            pairs = [(k, v) for k, v in valid if rng.random() < 0.85]
            pairs.append(
                (
                    rng.choice([k for k, _ in valid]) + rng.choice(["", "[]", "[0][x]"]),
                    rng.choice(["", "x", "-1", "[b]"]),
                )
            )
            body = urlencode(pairs).encode()
        else:
            body = "".join(
                rng.choice(string.printable + "[]%=&") for _ in range(rng.randint(0, 300))
            ).encode()
            if i % 7 == 0:
                body = bytes(rng.randint(0, 255) for _ in range(100))
        resp = await web.post(body)
        statuses.add(resp.status_code)
    assert statuses <= {200, 400, 401, 403}, statuses
    assert web.proc.proc.poll() is None


async def test_too_large_body(web: Web) -> None:
    # Announce a body over the limit: the answer comes before it is read (a raw request, so that a client
    # still busy writing the body cannot turn the early answer into a broken pipe).
    host, port = web.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"POST /webhooks/bitrix24/outbound HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1100000\r\n\r\nx=aaaa".encode()
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), timeout=10)
    writer.close()
    assert status_line.split()[1] == b"413"


async def test_health_and_metrics(web: Web) -> None:
    assert (await web.post(message_add(message_id="1005"))).status_code == 200
    assert (await web.post(message_add(message_id="1006", app_token="nope"))).status_code == 401
    async with httpx.AsyncClient() as http:

        async def all_up() -> dict[str, object] | None:
            health: dict[str, object] = (await http.get(f"{web.url}/health")).json()
            return health if health["status"] == "ok" else None

        # The dependencies as of at most 1 s ago (zaptrix.health caches them): a check run before the
        # producer started may still be the answer right after start-up.
        health = await eventually(all_up, timeout_s=5, what="every dependency up")
        assert health["service"] == "bitrix-ingress"
        assert health["dependencies"] == {"kafka": "up", "token_keeper": "up", "mapper": "up"}
        metrics = (await http.get(f"{web.url}/metrics")).text
    accepted = re.search(
        r'zaptrix_bitrix_events_received_total\{event="ONIMCONNECTORMESSAGEADD",outcome="accepted"\} (\d+)',
        metrics,
    )
    assert accepted and int(accepted.group(1)) >= 1
    assert (
        'zaptrix_http_requests_total{method="POST",route="/webhooks/bitrix24/outbound",status="401"}'
        in metrics
    )


async def test_kafka_down_answers_503_and_logs_the_event_ids_not_its_text(
    tmp_path: Path, fakes: GrpcFakes, kafka_prefix: str
) -> None:
    fakes.token_keeper.add(Portal("m1", "apptok"))
    fakes.mapper.bind("100", "m1", 7)
    fakes.mapper.add_conversation("100", "4917", "Anna").external_chat_id = "wa_100_4917"
    url, proc = start_web(tmp_path, fakes, f"127.0.0.1:{free_port()}", kafka_prefix)
    try:
        await wait_http(f"{url}/health", proc, ok=lambda s: s == 200)
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{url}/ready")).status_code == 503
            resp = await http.post(
                f"{url}/webhooks/bitrix24/outbound",
                content=urlencode(message_add()).encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            assert resp.status_code == 503
            metrics = (await http.get(f"{url}/metrics")).text
        assert (
            'zaptrix_bitrix_events_lost_total{event="ONIMCONNECTORMESSAGEADD",reason="kafka_unavailable"} 1.0'
            in metrics
        )
        await asyncio.sleep(0.3)
        log = proc.log()
        lost = [line for line in log.splitlines() if "NOT accepted" in line]
        assert lost, log[-2000:]
        assert '"level": "error"' in lost[0] and "86497" in lost[0] and "wa_100_4917" in lost[0]
        assert "Guten Tag" not in log  # ids, size and hash: never the operator's text (L3)
        assert "access-xyz" not in log and "apptok" not in log  # secrets never logged
    finally:
        await proc.astop()


async def test_mapper_down_the_web_stays_ready_and_takes_the_event_into_kafka(
    tmp_path: Path, fakes: GrpcFakes, kafka_bootstrap: str, kafka_prefix: str
) -> None:
    """The readiness cascade (aesthetics review 6): Bitrix24 never resends an event, so a web pod whose
    mapper is unreachable stays in rotation, keys the event by its chat id and hands it to Kafka; the
    mapper shows as down in /health and zaptrix_dependency_up, never in /ready."""
    fakes.token_keeper.add(Portal("m1", "apptok"))
    dead_mapper = f"127.0.0.1:{free_port()}"
    url, proc = start_web(tmp_path, fakes, kafka_bootstrap, kafka_prefix, ZAPTRIX_MAPPER_ADDR=dead_mapper)
    try:
        await wait_http(f"{url}/health", proc, ok=lambda s: s == 200)
        async with httpx.AsyncClient(timeout=30) as http:
            web = Web(url, proc, fakes, topics_for(Flow.B24_TO_WA, kafka_prefix).main, kafka_bootstrap, http)
            await wait_http(f"{url}/ready", proc, ok=lambda s: s == 200)
            resp = await web.post(message_add(message_id="2001"))
            assert resp.status_code == 200, resp.text
            (record,) = await web.records("b24:m1:2001", 1)
            health = (await http.get(f"{url}/health")).json()
            ready = await http.get(f"{url}/ready")
            metrics = (await http.get(f"{url}/metrics")).text
    finally:
        await proc.astop()
    assert record.key == b"wa_100_4917"  # keyed by the chat id while the mapper cannot be asked
    assert health["dependencies"]["mapper"] == "down" and health["status"] == "degraded"
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert 'zaptrix_dependency_up{dependency="mapper"} 0.0' in metrics


async def test_token_keeper_down_a_portal_verified_before_still_gets_its_events_into_kafka(
    tmp_path: Path, fakes: GrpcFakes, kafka_bootstrap: str, kafka_prefix: str
) -> None:
    """Issue 13 / M9: Bitrix24 never resends an event. With token-keeper down for longer than the verify
    cache (here 0 s: every event is past it), a (member_id, application_token) pair token-keeper verified
    before is taken from its last-known-good verification and reaches Kafka (counted). Token-keeper's own
    refusal still holds (401), and a pair never verified is not guessed at (503, counted lost)."""
    fakes.token_keeper.add(Portal("m1", "apptok"))
    fakes.token_keeper.add(Portal("m2", "apptok-m2"))
    fakes.mapper.bind("100", "m1", 7)
    fakes.mapper.add_conversation("100", "4917", "Anna").external_chat_id = "wa_100_4917"
    url, proc = start_web(tmp_path, fakes, kafka_bootstrap, kafka_prefix)  # ZAPTRIX_VERIFY_CACHE_TTL_S=0
    try:
        await wait_http(f"{url}/ready", proc, ok=lambda s: s == 200)
        async with httpx.AsyncClient(timeout=30) as http:
            web = Web(url, proc, fakes, topics_for(Flow.B24_TO_WA, kafka_prefix).main, kafka_bootstrap, http)
            assert (await web.post(message_add(message_id="5001"))).status_code == 200
            assert (await web.post(message_add(message_id="5002", app_token="wrong"))).status_code == 401
            fakes.token_keeper.down = True  # every call UNAVAILABLE from now on
            taken = await web.post(message_add(message_id="5003"))
            wrong = await web.post(message_add(message_id="5004", app_token="wrong"))
            unseen_portal = await web.post(as_member(message_add(message_id="5005"), "m2", "apptok-m2"))
            unseen_token = await web.post(message_add(message_id="5006", app_token="apptok-guess"))
            metrics = (await http.get(f"{url}/metrics")).text
            assert taken.status_code == 200, taken.text
            assert [r.key for r in await web.records("b24:m1:5003", 1)] == [b"100:4917"]
            assert wrong.status_code == 401, wrong.text
            assert (unseen_portal.status_code, unseen_token.status_code) == (503, 503)
            for mid in ("5004", "5005", "5006"):
                assert await web.records(f":{mid}", 1, within_s=0.3) == []
    finally:
        await proc.astop()
    assert "zaptrix_bitrix_verify_stale_total 1.0" in metrics
    assert (
        'zaptrix_bitrix_events_lost_total{event="ONIMCONNECTORMESSAGEADD",reason="token_keeper_unavailable"} 2.0'
        in metrics
    )
    assert "apptok" not in proc.log()  # the tokens themselves are never logged
