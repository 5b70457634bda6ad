"""The real `meta-dispatcher` process: Kafka (real) → Graph API stand-in (dev/sandbox, real HTTP).

The sandbox enforces the documented limits (80 mps per number → 130429, pair rate → 131056, the 24-h
window → 131047, token validity → 190); these tests assert the dispatcher never trips them under normal
load and reports what it cannot deliver.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from meta_support import MEMBER, PNID, TOKEN, Fakes, TopicReader, operator_message, wait_events
from zaptrix.kafka import EventProducer, Flow, topics_for
from zaptrix.settings import KafkaSettings
from zaptrix.v1 import events_pb2, mapper_pb2
from zaptrix_testing.processes import Proc
from zaptrix_testing.waiting import eventually

JPEG = bytes.fromhex("ffd8ffe000104a46494600010100000100010000ffd9")


@pytest.fixture(scope="module")
async def producer(kafka_bootstrap: str) -> AsyncIterator[EventProducer]:
    p = EventProducer(KafkaSettings(bootstrap_servers=kafka_bootstrap), client_id="meta-tests")
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
async def sandbox(graph: httpx.AsyncClient) -> httpx.AsyncClient:
    # The dispatcher under test paces pairs at 2/s (+0.25 s margin); the stand-in enforces 2/s.
    (await graph.post("/_sandbox/config", json={"pair_rate_per_s": 2.0})).raise_for_status()
    return graph


@pytest.fixture
async def failures(kafka_bootstrap: str, topic_prefix: str) -> AsyncIterator[TopicReader]:
    r = await TopicReader(kafka_bootstrap, topics_for(Flow.WA_TO_B24, topic_prefix).main).start()
    await r.take(100_000, within=0.3)
    yield r
    await r.stop()


@pytest.fixture
async def dead_letters(kafka_bootstrap: str, topic_prefix: str) -> AsyncIterator[TopicReader]:
    r = await TopicReader(kafka_bootstrap, topics_for(Flow.B24_TO_WA, topic_prefix).dlq).start()
    await r.take(100_000, within=0.3)
    yield r
    await r.stop()


@pytest.fixture(scope="module")
def files() -> Iterator[dict[str, tuple[int, str, bytes]]]:
    """A stand-in for Bitrix24's file links: path -> (status, content type, body)."""
    table: dict[str, tuple[int, str, bytes]] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status_code, ctype, body = table.get(self.path, (404, "text/plain", b"not found"))
            self.send_response(status_code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    table["__base__"] = (0, "", f"http://127.0.0.1:{server.server_address[1]}".encode())
    yield table
    server.shutdown()


async def publish(producer: EventProducer, prefix: str, *envs: events_pb2.Envelope) -> None:
    await producer.publish(topics_for(Flow.B24_TO_WA, prefix).main, list(envs))


async def sent_to(graph: httpx.AsyncClient, wa_id: str | None = None) -> list[dict[str, Any]]:
    params = {"to": wa_id} if wa_id else {}
    return list((await graph.get("/_sandbox/sent", params=params)).json()["sent"])


async def wait_sent(
    graph: httpx.AsyncClient, wa_id: str | None, n: int, within: float = 15.0
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + within
    while True:
        sent = await sent_to(graph, wa_id)
        if len(sent) >= n or time.monotonic() > deadline:
            return sent
        await asyncio.sleep(0.25)  # the listing is heavy for the stand-in: do not steal its CPU


async def open_windows(graph: httpx.AsyncClient, *wa_ids: str, ago_s: float = 60) -> None:
    customers = [{"wa_id": w, "last_inbound_ago_s": ago_s} for w in wa_ids]
    (await graph.post("/_sandbox/config", json={"customers": customers})).raise_for_status()


def customer() -> str:
    return "49" + str(uuid.uuid4().int % 10**10).zfill(10)


async def send_failure(reader: TopicReader, event_id: str, within: float = 10.0) -> events_pb2.SendFailure:
    return (await wait_events(reader, event_id, within=within))[event_id].send_failure


async def test_text_is_sent_converted_linked_and_never_twice(
    dispatcher: Proc, sandbox: httpx.AsyncClient, fresh: Fakes, producer: EventProducer, topic_prefix: str
) -> None:
    wa = customer()
    await open_windows(sandbox, wa)
    conv = fresh.mapper.add_conversation(wa)
    env = operator_message(conv, "[b]Operator:[/b][br] Hello [i]there[/i] [url=https://x.io]site[/url]")
    await publish(producer, topic_prefix, env)
    sent = await wait_sent(sandbox, wa, 1)
    assert len(sent) == 1 and sent[0]["outcome"] != "rejected", sent
    assert sent[0]["payload"]["text"]["body"] == "*Operator:*\nHello _there_ site (https://x.io)"
    await asyncio.sleep(0.3)
    link = fresh.mapper.links[sent[0]["wamid"]]
    assert link.bitrix_message_id == env.operator_message.bitrix_message_id
    assert link.direction == mapper_pb2.DIRECTION_OUTBOUND
    assert fresh.mapper.processed[env.event_id] == sent[0]["wamid"]
    # Redelivery (Kafka at-least-once, a replay from the dead-letter topic): nothing is sent again.
    await publish(producer, topic_prefix, env, env)
    await asyncio.sleep(1.0)
    assert len(await sent_to(sandbox, wa)) == 1


async def test_burst_of_200_respects_throughput(
    dispatcher: Proc, sandbox: httpx.AsyncClient, fresh: Fakes, producer: EventProducer, topic_prefix: str
) -> None:
    customers = [customer() for _ in range(200)]
    await open_windows(sandbox, *customers)
    envs = [
        operator_message(fresh.mapper.add_conversation(wa), f"burst {i}") for i, wa in enumerate(customers)
    ]
    await publish(producer, topic_prefix, *envs)
    sent = await wait_sent(sandbox, None, 200, within=30)
    rejected = [s for s in sent if s["outcome"] == "rejected"]
    assert not rejected, rejected[:3]
    assert len(sent) == 200
    assert len({s["wa_id"] for s in sent}) == 200
    # 80 mps with a burst of 8: 200 sends need at least (200 - 8) / 80 = 2.4 s
    at = sorted(s["at"] for s in sent)
    assert at[-1] - at[0] >= 2.3, at[-1] - at[0]
    # Our limiter allows 80/s plus a burst of 8; arrival jitter may bunch a few more into one second.
    # The criterion is the stand-in's own 80/s bucket, asserted above: nothing was rejected (130429).
    # Arrival times are not asserted (timings belong in bench/; a loaded box bunches arrivals).


async def test_pair_rate_paced_in_order(
    dispatcher: Proc, sandbox: httpx.AsyncClient, fresh: Fakes, producer: EventProducer, topic_prefix: str
) -> None:
    wa = customer()
    await open_windows(sandbox, wa)
    conv = fresh.mapper.add_conversation(wa)
    envs = [operator_message(conv, f"quick {i}") for i in range(4)]
    await publish(producer, topic_prefix, *envs)
    sent = await wait_sent(sandbox, wa, 4, within=20)
    assert [s["payload"]["text"]["body"] for s in sent] == [f"quick {i}" for i in range(4)]
    assert all(s["outcome"] != "rejected" for s in sent), [s["response"] for s in sent]
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(sent)]
    assert min(gaps) >= 0.5, gaps  # the stand-in's pair rate (2/s) was never exceeded


async def test_window_closed_sends_template_and_tells_operator(
    dispatcher: Proc,
    sandbox: httpx.AsyncClient,
    fresh: Fakes,
    producer: EventProducer,
    topic_prefix: str,
    failures: TopicReader,
) -> None:
    wa = customer()
    conv = fresh.mapper.add_conversation(wa, last_customer_ago_s=25 * 3600)
    fresh.mapper.channels[PNID].reengagement_template = "hello_world"
    fresh.mapper.channels[PNID].template_language = "en_US"
    env = operator_message(conv, "are you there?")
    await publish(producer, topic_prefix, env)
    failure = await send_failure(failures, f"wa-fail:{MEMBER}:{env.operator_message.bitrix_message_id}")
    assert failure.error.code == 131047
    assert failure.template_sent is True
    assert "24 hours" in failure.notice and "hello_world" in failure.notice
    assert failure.bitrix_message_id == env.operator_message.bitrix_message_id
    sent = await sent_to(sandbox, wa)
    assert [s["type"] for s in sent] == ["template"]  # the plain text was never attempted
    # A second message in the same window: notice again, but no second template (cooldown).
    env2 = operator_message(conv, "hello?")
    await publish(producer, topic_prefix, env2)
    failure2 = await send_failure(failures, f"wa-fail:{MEMBER}:{env2.operator_message.bitrix_message_id}")
    assert failure2.template_sent is False and "already sent" in failure2.notice
    assert len(await sent_to(sandbox, wa)) == 1


async def test_window_closed_synchronous_131047(
    dispatcher: Proc,
    sandbox: httpx.AsyncClient,
    fresh: Fakes,
    producer: EventProducer,
    topic_prefix: str,
    failures: TopicReader,
) -> None:
    (await sandbox.post("/_sandbox/config", json={"window_error_mode": "sync"})).raise_for_status()
    wa = customer()  # the stand-in never heard from this customer: window closed
    conv = fresh.mapper.add_conversation(wa, last_customer_ago_s=None)  # unknown to the mapper
    env = operator_message(conv, "hi")
    await publish(producer, topic_prefix, env)
    failure = await send_failure(failures, f"wa-fail:{MEMBER}:{env.operator_message.bitrix_message_id}")
    assert failure.error.code == 131047 and failure.template_sent is False
    await asyncio.sleep(0.3)
    assert fresh.mapper.processed[env.event_id] == "failed:131047"


async def test_window_closed_after_the_send_sends_the_template(
    web: Proc,
    dispatcher: Proc,
    sandbox: httpx.AsyncClient,
    fresh: Fakes,
    producer: EventProducer,
    topic_prefix: str,
    failures: TopicReader,
) -> None:
    """Asynchronous 131047 across both processes: the stand-in accepts the text, then posts a failed status
    to meta-ingress-web, which forwards the status (the operator's notice) and a WindowClosed; the dispatcher
    sends the re-engagement template and tells the operator."""
    config = {"webhook_url": f"{web.url}/webhooks/meta", "window_error_mode": "async"}
    (await sandbox.post("/_sandbox/config", json=config)).raise_for_status()
    fresh.mapper.channels[PNID].reengagement_template = "hello_world"
    wa = customer()  # the stand-in never heard from this customer: the window is closed
    conv = fresh.mapper.add_conversation(wa, last_customer_ago_s=None)  # unknown to the mapper: send
    env = operator_message(conv, "still interested?")
    await publish(producer, topic_prefix, env)
    sent = await wait_sent(sandbox, wa, 2)
    assert [s["type"] for s in sent] == ["text", "template"], sent
    text_wamid = sent[0]["wamid"]
    assert fresh.mapper.processed[env.event_id] == text_wamid  # Meta had accepted it
    status_id, notice_id = f"wa-status:{text_wamid}:failed", f"wa-fail:{MEMBER}:window:{text_wamid}"
    seen = await wait_events(failures, status_id, notice_id)
    assert seen[status_id].whatsapp_status.errors[0].code == 131047
    failure = seen[notice_id].send_failure
    assert failure.template_sent is True and "hello_world" in failure.notice
    assert failure.external_chat_id == conv.external_chat_id
    await asyncio.sleep(0.3)
    assert fresh.mapper.processed[f"wa-window:{text_wamid}"] == "template_sent"
    # The template itself is accepted (templates may open a closed window): no second round.
    assert len(await sent_to(sandbox, wa)) == 2


async def test_rejected_token_dead_letters_once_and_tells_operator(
    dispatcher: Proc,
    sandbox: httpx.AsyncClient,
    fresh: Fakes,
    producer: EventProducer,
    topic_prefix: str,
    failures: TopicReader,
    dead_letters: TopicReader,
) -> None:
    wa = customer()
    await open_windows(sandbox, wa)
    (await sandbox.post("/_sandbox/config", json={"expire_tokens": [TOKEN]})).raise_for_status()
    conv = fresh.mapper.add_conversation(wa)
    env = operator_message(conv, "hi")
    await publish(producer, topic_prefix, env)
    failure = await send_failure(failures, f"wa-fail:{MEMBER}:{env.operator_message.bitrix_message_id}")
    assert failure.error.code == 190 and "access token" in failure.notice
    dead = await dead_letters.take(1)
    assert dead[0].envelope.event_id == env.event_id
    assert "auth" in dead[0].headers["zaptrix-dlq-reason"]
    await asyncio.sleep(0.5)
    # One call only: the token token-keeper holds is the rejected one, so there is nothing to retry with.
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"{dispatcher.url}/metrics")).text
    assert 'zaptrix_meta_sends_total{outcome="190",type="text"} 1.0' in metrics
    assert f'zaptrix_meta_token_errors_total{{phone_number_id="{PNID}"}} 1.0' in metrics
    assert env.event_id not in fresh.mapper.processed  # replayable once the token is renewed


async def test_files_are_uploaded_with_caption(
    dispatcher: Proc,
    sandbox: httpx.AsyncClient,
    fresh: Fakes,
    producer: EventProducer,
    topic_prefix: str,
    files: dict[str, tuple[int, str, bytes]],
    failures: TopicReader,
) -> None:
    base = files["__base__"][2].decode()
    files["/photo.jpg"] = (200, "image/jpeg", JPEG)
    files["/report.pdf"] = (200, "application/pdf", b"%PDF-1.4 tiny")
    files["/gone.png"] = (404, "text/plain", b"gone")
    wa = customer()
    await open_windows(sandbox, wa)
    conv = fresh.mapper.add_conversation(wa)
    env = operator_message(
        conv,
        "see [b]attached[/b]",
        files=[
            events_pb2.BitrixFile(name="photo.jpg", type="image", link=f"{base}/photo.jpg", size=len(JPEG)),
            events_pb2.BitrixFile(
                name="report.pdf", type="file", link=f"{base}/report.pdf", mime_type="application/pdf"
            ),
            events_pb2.BitrixFile(name="gone.png", type="image", link=f"{base}/gone.png"),
        ],
        reply_to_external_id="wamid.CUSTOMER1",
    )
    await publish(producer, topic_prefix, env)
    failure = await send_failure(
        failures, f"wa-fail:{MEMBER}:{env.operator_message.bitrix_message_id}", within=15
    )
    assert "gone.png" in failure.notice and "HTTP 404" in failure.notice
    sent = await sent_to(sandbox, wa)
    assert [s["type"] for s in sent] == ["image", "document"]
    image = sent[0]["payload"]
    assert image["image"]["caption"] == "see *attached*"
    assert image["context"] == {"message_id": "wamid.CUSTOMER1"}
    assert "id" in image["image"] and "link" not in image["image"]
    assert sent[1]["payload"]["document"]["filename"] == "report.pdf"
    media = (await sandbox.get(f"/_sandbox/media/{image['image']['id']}")).json()
    assert media["size"] == len(JPEG) and media["mime_type"] == "image/jpeg"
    assert fresh.mapper.links[sent[0]["wamid"]].bitrix_message_id == env.operator_message.bitrix_message_id


async def test_operator_read_marks_the_latest_customer_message(
    dispatcher: Proc, sandbox: httpx.AsyncClient, fresh: Fakes, producer: EventProducer, topic_prefix: str
) -> None:
    wa = customer()
    inbound = await sandbox.post(f"/_sandbox/customers/{wa}/messages", json={"text": "hello"})
    wamid = inbound.json()["wamid"]
    conv = fresh.mapper.add_conversation(wa)
    env = events_pb2.Envelope(
        event_id=f"b24-read:{uuid.uuid4().hex}",
        conversation_key=f"{PNID}:{wa}",
        source=events_pb2.PLATFORM_BITRIX24,
        operator_read=events_pb2.OperatorRead(
            member_id=MEMBER, external_chat_id=conv.external_chat_id, wamids=["wamid.unknown", wamid]
        ),
    )
    await publish(producer, topic_prefix, env)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        reads = (await sandbox.get("/_sandbox/reads")).json()["reads"]
        if reads:
            break
        await asyncio.sleep(0.05)
    assert [r["message_id"] for r in reads] == [wamid]


async def test_operator_reply_marks_the_customers_latest_message_read(
    dispatcher: Proc, sandbox: httpx.AsyncClient, fresh: Fakes, producer: EventProducer, topic_prefix: str
) -> None:
    """Bitrix24 sends no read event for connectors: the OperatorRead of a reply carries no wamids, and the
    customer's latest message (the mapper's latest inbound link of the conversation) is marked read."""
    wa = customer()
    conv = fresh.mapper.add_conversation(wa)
    wamids = []
    for text in ("hello", "anyone there?"):
        inbound = await sandbox.post(f"/_sandbox/customers/{wa}/messages", json={"text": text})
        wamids.append(inbound.json()["wamid"])
        fresh.mapper.links[wamids[-1]] = mapper_pb2.MessageLink(
            conversation_id=conv.id,
            direction=mapper_pb2.DIRECTION_INBOUND,
            wamid=wamids[-1],
            member_id=MEMBER,
        )
    fresh.mapper.links["wamid.reply-of-the-operator"] = mapper_pb2.MessageLink(
        conversation_id=conv.id, direction=mapper_pb2.DIRECTION_OUTBOUND, wamid="wamid.reply-of-the-operator"
    )
    env = events_pb2.Envelope(
        event_id=f"b24-read:{uuid.uuid4().hex}",
        conversation_key=f"{PNID}:{wa}",
        source=events_pb2.PLATFORM_BITRIX24,
        operator_read=events_pb2.OperatorRead(
            member_id=MEMBER, external_chat_id=conv.external_chat_id, replying=True
        ),
    )
    await publish(producer, topic_prefix, env)

    async def marked() -> list[dict[str, Any]]:
        reads = (await sandbox.get("/_sandbox/reads")).json()["reads"]
        return [r for r in reads if r["wa_id"] == wa]

    (read,) = await eventually(marked, timeout_s=10)
    assert read["message_id"] == wamids[-1]


async def test_edit_and_delete_are_reported_not_dropped(
    dispatcher: Proc,
    sandbox: httpx.AsyncClient,
    fresh: Fakes,
    producer: EventProducer,
    topic_prefix: str,
    failures: TopicReader,
) -> None:
    wa = customer()
    conv = fresh.mapper.add_conversation(wa)
    edit = events_pb2.Envelope(
        event_id="b24-edit:1:" + uuid.uuid4().hex,
        conversation_key=f"{PNID}:{wa}",
        source=events_pb2.PLATFORM_BITRIX24,
        operator_message_edit=events_pb2.OperatorMessageEdit(
            member_id=MEMBER,
            bitrix_message_id="555",
            external_chat_id=conv.external_chat_id,
            text_bbcode="fixed",
        ),
    )
    delete = events_pb2.Envelope(
        event_id="b24-delete:1:" + uuid.uuid4().hex,
        conversation_key=f"{PNID}:{wa}",
        source=events_pb2.PLATFORM_BITRIX24,
        operator_message_delete=events_pb2.OperatorMessageDelete(
            member_id=MEMBER, bitrix_message_id="555", external_chat_id=conv.external_chat_id
        ),
    )
    await publish(producer, topic_prefix, edit, delete)
    seen: dict[str, events_pb2.SendFailure] = {}
    deadline = time.monotonic() + 10
    while len(seen) < 2 and time.monotonic() < deadline:
        for rec in await failures.take(10, within=0.2):
            if rec.envelope.event_id.startswith(f"wa-fail:{MEMBER}:555:"):
                seen[rec.envelope.event_id.split(":")[3]] = rec.envelope.send_failure
    assert set(seen) == {"edit", "delete"}
    assert "cannot change" in seen["edit"].notice and seen["edit"].bitrix_message_id == ""
    assert "cannot delete" in seen["delete"].notice
    assert await sent_to(sandbox, wa) == []


async def test_unknown_conversation_goes_to_dead_letters(
    dispatcher: Proc,
    sandbox: httpx.AsyncClient,
    fresh: Fakes,
    producer: EventProducer,
    topic_prefix: str,
    dead_letters: TopicReader,
) -> None:
    ghost = mapper_pb2.Conversation(phone_number_id=PNID, wa_id="1", external_chat_id="wa_ghost")
    env = operator_message(ghost, "to nobody")
    await publish(producer, topic_prefix, env)
    dead = await dead_letters.take(1)
    assert dead and dead[0].envelope.event_id == env.event_id
    # The mapper answers an unknown chat exactly as another portal's: refused the same way.
    assert dead[0].headers["zaptrix-dlq-reason"].startswith("cross-tenant:")


async def test_events_naming_another_portals_chat_touch_nothing_and_tell_nobody(
    dispatcher: Proc,
    sandbox: httpx.AsyncClient,
    fresh: Fakes,
    producer: EventProducer,
    topic_prefix: str,
    failures: TopicReader,
    dead_letters: TopicReader,
) -> None:
    """Portal B's events (past bitrix-ingress) naming portal A's chat: no send, no template, no read mark,
    no notice to anyone; each dead-lettered as cross-tenant."""
    wa = customer()
    inbound = await sandbox.post(f"/_sandbox/customers/{wa}/messages", json={"text": "hello"})
    wamid = inbound.json()["wamid"]
    conv = fresh.mapper.add_conversation(wa, last_customer_ago_s=90_000)  # closed window: template path
    fresh.mapper.channels[PNID].reengagement_template = "hello_world"
    chat, key, b = conv.external_chat_id, f"{PNID}:{wa}", "portal-b"
    message = operator_message(conv, "phishing")
    message.operator_message.member_id = b
    edit = events_pb2.Envelope(
        event_id="b24-edit:b:" + uuid.uuid4().hex,
        conversation_key=key,
        source=events_pb2.PLATFORM_BITRIX24,
        operator_message_edit=events_pb2.OperatorMessageEdit(
            member_id=b, bitrix_message_id="556", external_chat_id=chat, text_bbcode="x"
        ),
    )
    delete = events_pb2.Envelope(
        event_id="b24-del:b:" + uuid.uuid4().hex,
        conversation_key=key,
        source=events_pb2.PLATFORM_BITRIX24,
        operator_message_delete=events_pb2.OperatorMessageDelete(
            member_id=b, bitrix_message_id="556", external_chat_id=chat
        ),
    )
    read = events_pb2.Envelope(
        event_id="b24-read:b:" + uuid.uuid4().hex,
        conversation_key=key,
        source=events_pb2.PLATFORM_BITRIX24,
        operator_read=events_pb2.OperatorRead(member_id=b, external_chat_id=chat, wamids=[wamid]),
    )
    forged = [message, edit, delete, read]
    await publish(producer, topic_prefix, *forged)
    reasons: dict[str, str] = {}
    deadline = time.monotonic() + 15
    while len(reasons) < len(forged) and time.monotonic() < deadline:
        for rec in await dead_letters.take(10, within=0.2):
            reasons[rec.envelope.event_id] = rec.headers["zaptrix-dlq-reason"]
    assert {e.event_id for e in forged} <= set(reasons), reasons
    assert all(reasons[e.event_id].startswith("cross-tenant:") for e in forged), reasons
    assert await sent_to(sandbox, wa) == []  # neither the text nor the re-engagement template
    reads = (await sandbox.get("/_sandbox/reads")).json()["reads"]
    assert wamid not in [r["message_id"] for r in reads]
    notices = [
        r for r in await failures.take(100, within=0.5) if r.envelope.send_failure.external_chat_id == chat
    ]
    assert notices == []


async def test_recording_failure_after_send_does_not_send_twice(
    dispatcher: Proc, sandbox: httpx.AsyncClient, fresh: Fakes, producer: EventProducer, topic_prefix: str
) -> None:
    """The mapper fails the recording (RecordDelivery) longer than the in-process attempts: the event goes through the retry
    topic, and the retry only records the send noted on its record instead of sending again."""
    wa = customer()
    await open_windows(sandbox, wa)
    conv = fresh.mapper.add_conversation(wa)
    fresh.mapper.fail_mark = 5
    env = operator_message(conv, "only once")
    await publish(producer, topic_prefix, env)
    deadline = time.monotonic() + 15
    while env.event_id not in fresh.mapper.processed and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    sent = await sent_to(sandbox, wa)
    assert len(sent) == 1
    assert fresh.mapper.processed[env.event_id] == sent[0]["wamid"]
    # 4 attempts in process, then the retry: 1 more failure, and the record
    assert fresh.mapper.calls.count(f"RecordDelivery:{env.event_id}") == 6
