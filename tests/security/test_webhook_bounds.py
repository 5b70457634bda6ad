"""POST /webhooks/meta: unauthenticated work is bounded, sizes agree end to end, trace context from the
internet is not trusted (security review H4, M6, L1).

The real `meta-ingress-web` process against real Kafka, with an in-test token-keeper that counts its
calls (services/meta-ingress/tests/meta_support.py) and a real OTLP receiver for the spans.
"""

from __future__ import annotations

import asyncio
import re
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from opentelemetry.instrumentation.utils import suppress_http_instrumentation, suppress_instrumentation

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "services" / "meta-ingress" / "tests"))

from meta_support import (
    PNID,
    WABA,
    Fakes,
    TopicReader,
    base_env,
    dump,
    msg,
    sign,
    start_fakes,
    value,
    wait_events,
    webhook,
)
from zaptrix.kafka import Flow, topics_for
from zaptrix.kafka.admin import ensure_topics
from zaptrix.settings import KafkaSettings
from zaptrix_testing.ports import free_port
from zaptrix_testing.processes import BIN, Proc, Spec, start_processes

from tests.e2e.otlp import ReceivedSpan, Receiver, start_receiver

UNKNOWN = "700000000000007"


@dataclass
class Env:
    web: Proc
    fakes: Fakes
    otlp: Receiver
    prefix: str
    bootstrap: str


@pytest.fixture(scope="module")
def fakes() -> Iterator[Fakes]:
    f = start_fakes()
    yield f
    f.stop()


@pytest.fixture(scope="module")
async def env(
    kafka_bootstrap: str, fakes: Fakes, tmp_path_factory: pytest.TempPathFactory, processes: None
) -> AsyncIterator[Env]:
    prefix = f"zt-sec-{uuid.uuid4().hex[:8]}"
    names = [t for flow in Flow for t in topics_for(flow, prefix).all()]
    await ensure_topics(KafkaSettings(bootstrap_servers=kafka_bootstrap), names, partitions=1)
    otlp_port = free_port()
    server, receiver = await start_receiver(otlp_port)
    port = free_port()
    environment = {
        **base_env(kafka_bootstrap, prefix, fakes.addr, f"http://127.0.0.1:{free_port()}"),
        "ZAPTRIX_WEB_PORT": str(port),
        "ZAPTRIX_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "ZAPTRIX_PUBLISH_TIMEOUT_S": "20",  # 1,000 events on a shared, busy test machine
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_SERVICE_NAME": "meta-ingress",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    logs = tmp_path_factory.mktemp("webhook-bounds")
    (web,) = start_processes(
        Spec([str(BIN / "meta-ingress-web")], environment, f"http://127.0.0.1:{port}/ready", logs / "web.log")
    )
    yield Env(web, fakes, receiver, prefix, kafka_bootstrap)
    web.stop()
    await server.stop(0)


@pytest.fixture
def fresh(env: Env) -> Env:
    env.fakes.reset()
    return env


async def reader(env: Env, topic: str) -> TopicReader:
    r = await TopicReader(env.bootstrap, topic).start()
    await r.take(100_000, within=0.5)  # skip what earlier tests produced
    return r


async def post(env: Env, body: bytes, signature: str | None, **headers: str) -> httpx.Response:
    hdrs = {"Content-Type": "application/json", **headers}
    if signature is not None:
        hdrs["X-Hub-Signature-256"] = signature
    # Exactly these headers: if an earlier test in this process instrumented httpx, its propagator would
    # replace our `traceparent` with the test process's own.
    with suppress_instrumentation(), suppress_http_instrumentation():
        async with httpx.AsyncClient(timeout=60) as client:
            return await client.post(f"{env.web.url}/webhooks/meta", content=body, headers=hdrs)


async def label_values(env: Env, metric: str, label: str) -> set[str]:
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"{env.web.url}/metrics")).text
    pattern = re.compile(rf'^{metric}\{{[^}}]*{label}="([^"]*)"', re.M)
    return set(pattern.findall(text))


async def status_of_oversized_post(env: Env, length: int) -> int:
    """The status answered to a body of `length` bytes, read as soon as the server answers: it refuses by
    Content-Length and closes, so a client still writing the body would only see a broken connection."""
    host, port = env.web.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = (
            f"POST /webhooks/meta HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"X-Hub-Signature-256: sha256={'0' * 64}\r\nContent-Length: {length}\r\n\r\n"
        )
        writer.write(head.encode() + b" " * 1024)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=30)
        return int(status_line.split()[1])
    finally:
        writer.close()


def credential_calls(env: Env) -> int:
    """token-keeper lookups of a signer: a channel's credentials, or a WABA's app secret."""
    return sum(
        c.startswith(("GetChannelCredentials", "GetWabaAppSecret")) for c in env.fakes.token_keeper.calls
    )


async def test_a_random_field_names_create_no_metric_labels(fresh: Env) -> None:
    before = await label_values(fresh, "zaptrix_meta_ignored_changes_total", "field")
    fields = [f"f{uuid.uuid4().hex}" for _ in range(10_000)]
    changes = [{"field": f, "value": {}} for f in fields]
    body = dump({"object": "whatsapp_business_account", "entry": [{"id": WABA, "changes": changes}]})
    await post(fresh, body, sign(body, "not-the-secret"))
    # the same attack signed by a tenant (a smaller body, within the per-webhook caps)
    warm = dump(webhook(value([msg("text", {"body": "warm the cache"})])))
    assert (await post(fresh, warm, sign(warm))).status_code == 200
    signed = dump({"object": "whatsapp_business_account", "entry": [{"id": WABA, "changes": changes[:900]}]})
    await post(fresh, signed, sign(signed))
    after = await label_values(fresh, "zaptrix_meta_ignored_changes_total", "field")
    leaked = len(after & set(fields))
    assert leaked == 0, f"{leaked} attacker-chosen label values"
    assert len(after - before) <= 1, after - before  # at most the fixed "other"


async def test_b_many_phone_number_ids_cost_one_lookup(fresh: Env) -> None:
    ids = [str(10**14 + i) for i in range(5_000)]
    unsigned = dump(webhook(*(value([msg("text", {"body": "x"})], pnid=p) for p in ids), entries=50))
    resp = await post(fresh, unsigned, sign(unsigned, "not-the-secret"))
    assert resp.status_code == 401
    assert credential_calls(fresh) <= 1, credential_calls(fresh)
    fresh.fakes.token_keeper.calls.clear()
    # signed by a real tenant: refused for naming too many numbers, still without fan-out
    signed = dump(webhook(*(value([msg("text", {"body": "x"})], pnid=p) for p in [PNID, *ids]), entries=50))
    resp = await post(fresh, signed, sign(signed))
    assert resp.status_code in (400, 413), resp.text
    assert credential_calls(fresh) <= 1, credential_calls(fresh)
    fresh.fakes.token_keeper.calls.clear()
    # no number at all (a WABA's own webhook), many WABA ids: only the first entry's is asked for
    change = {"field": "message_template_status_update", "value": {}}
    wabas = dump(
        {"object": "whatsapp_business_account", "entry": [{"id": i, "changes": [change]} for i in ids]}
    )
    resp = await post(fresh, wabas, sign(wabas, "not-the-secret"))
    assert resp.status_code == 401
    assert fresh.fakes.token_keeper.calls == [f"GetWabaAppSecret:{ids[0]}"]


async def test_c_unknown_channel_and_bad_signature_look_the_same(fresh: Env) -> None:
    # a number not set up, in a WhatsApp Business Account none of whose numbers is known either
    unknown = dump(webhook(value([msg("text", {"body": "hi"})], pnid=UNKNOWN))).replace(
        WABA.encode(), b"300000000000003"
    )
    forged = dump(webhook(value([msg("text", {"body": "hi"})])))
    a = await post(fresh, unknown, sign(unknown))
    b = await post(fresh, forged, sign(forged, "not-the-secret"))
    assert (a.status_code, a.content) == (b.status_code, b.content)
    assert a.status_code == 401
    assert UNKNOWN.encode() not in a.content


async def test_d_mixed_batch_takes_the_known_number_and_parks_the_unknown(fresh: Env) -> None:
    topics = topics_for(Flow.WA_TO_B24, fresh.prefix)
    main, dlq = await reader(fresh, topics.main), await reader(fresh, topics.dlq)
    try:
        known = msg("text", {"body": "for a set-up number"})
        other = msg("text", {"body": "for a number not set up yet"})
        body = dump(webhook(value([known]), value([other], pnid=UNKNOWN)))
        resp = await post(fresh, body, sign(body))
        assert resp.status_code == 200, resp.text
        got = await wait_events(main, f"wa:{known['id']}")
        assert got[f"wa:{known['id']}"].customer_message.text == "for a set-up number"
        parked = [r for r in await dlq.take(1, within=10) if r.envelope.event_id == f"wa:{other['id']}"]
        assert parked, "the unknown number's message is parked in the dead-letter topic"
        assert "unknown channel" in parked[0].headers["zaptrix-dlq-reason"]
        assert parked[0].headers["zaptrix-dlq-source-topic"] == topics.main
        assert "unknown_channel" in await label_values(fresh, "zaptrix_meta_webhook_parked_total", "reason")
    finally:
        await main.stop()
        await dlq.stop()


async def test_e_signed_3mb_webhook_with_1000_updates_lands(fresh: Env) -> None:
    main = await reader(fresh, topics_for(Flow.WA_TO_B24, fresh.prefix).main)
    try:
        messages = [msg("text", {"body": "x" * 2_800}) for _ in range(1_000)]
        body = dump(webhook(*(value([m]) for m in messages), entries=10))
        assert 2_900_000 < len(body) <= 3_200_000, len(body)
        resp = await post(fresh, body, sign(body))
        assert resp.status_code == 200, resp.text
        got = await wait_events(main, *(f"wa:{m['id']}" for m in messages), within=60)
        assert len(got) == 1_000
    finally:
        await main.stop()


async def test_e_signed_3mb_single_text_is_truncated_not_503(fresh: Env) -> None:
    main = await reader(fresh, topics_for(Flow.WA_TO_B24, fresh.prefix).main)
    try:
        huge = msg("text", {"body": "é" * 500_000})  # 3 MB as Meta sends it (\u00e9), 1 MB of UTF-8
        body = dump(webhook(value([huge])))
        resp = await post(fresh, body, sign(body))
        assert resp.status_code == 200, resp.text
        env = (await wait_events(main, f"wa:{huge['id']}"))[f"wa:{huge['id']}"]
        assert env.customer_message.text.endswith("[truncated]")
        assert env.ByteSize() < 1024 * 1024
        assert await status_of_oversized_post(fresh, 5 * 1024 * 1024) == 413
    finally:
        await main.stop()


async def test_f_incoming_traceparent_is_a_link_not_the_parent(fresh: Env) -> None:
    main = await reader(fresh, topics_for(Flow.WA_TO_B24, fresh.prefix).main)
    try:
        remote_trace = uuid.uuid4().hex
        m = msg("text", {"body": "traced"})
        body = dump(webhook(value([m])))
        resp = await post(
            fresh,
            body,
            sign(body),
            traceparent=f"00-{remote_trace}-{uuid.uuid4().hex[:16]}-01",
            baggage="tenant=attacker",
        )
        assert resp.status_code == 200
        records = [r for r in await main.take(5, within=10) if r.envelope.event_id == f"wa:{m['id']}"]
        assert records
        assert remote_trace not in records[0].headers.get("traceparent", "")
        assert "baggage" not in records[0].headers

        def linked() -> list[ReceivedSpan]:  # SERVER spans linked to the caller's trace
            return [s for s in fresh.otlp.spans if s.kind == 2 and remote_trace in s.links]

        for _ in range(100):
            if linked():
                break
            await asyncio.sleep(0.1)
        spans = linked()
        assert spans, "the SERVER span carries the incoming context as a link"
        assert all(s.trace_id != remote_trace and not s.parent_span_id for s in spans)
        assert not any(s.trace_id == remote_trace for s in fresh.otlp.spans)
    finally:
        await main.stop()
