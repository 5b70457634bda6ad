"""WindowClosed (an asynchronous 131047) in the meta dispatcher, in process: the in-test gRPC fakes of mapper
and token-keeper, the Graph API behind httpx.MockTransport and a producer that keeps what it publishes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from meta_ingress.dispatcher.notices import Notice
from meta_ingress.dispatcher.process import MetaDispatcher
from meta_ingress.graph.client import GraphClient
from meta_ingress.settings import DispatcherSettings
from meta_support import MEMBER, PNID, TOKEN, Fakes, operator_message
from opentelemetry import trace
from prometheus_client import REGISTRY
from zaptrix.clients import Clients
from zaptrix.kafka import Outcome, PermanentError, PublishError, Received, TransientError
from zaptrix.settings import GrpcClientSettings
from zaptrix.v1 import events_pb2

OUT = "wa-to-b24-test"


@dataclass
class Producer:
    published: list[events_pb2.Envelope] = field(default_factory=list)
    fail: int = 0  # the next N publishes raise PublishError

    async def publish(self, topic: str, envelopes: Sequence[events_pb2.Envelope]) -> None:
        assert topic == OUT
        if self.fail > 0:
            self.fail -= 1
            raise PublishError("Kafka down")
        self.published.extend(envelopes)


@dataclass
class Graph:
    """Answers template sends: 200 with a new wamid, or the queued error answers first."""

    sent: list[dict[str, Any]] = field(default_factory=list)
    errors: list[httpx.Response] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        if self.errors:
            return self.errors.pop(0)
        self.sent.append(json.loads(request.content))
        return httpx.Response(200, json={"messages": [{"id": f"wamid.T{len(self.sent)}"}]})


@dataclass
class Harness:
    dispatcher: MetaDispatcher
    producer: Producer
    graph: Graph
    fakes: Fakes

    async def closed(self, wamid: str, wa_id: str = "4915100000001") -> Outcome | None:
        env = events_pb2.Envelope(
            event_id=f"wa-window:{wamid}",
            conversation_key=f"{PNID}:{wa_id}",
            source=events_pb2.PLATFORM_WHATSAPP,
            window_closed=events_pb2.WindowClosed(phone_number_id=PNID, wa_id=wa_id, wamid=wamid),
        )
        return await self.handle(env)

    async def handle(self, env: events_pb2.Envelope) -> Outcome | None:
        return await self.dispatcher.handle(
            Received(env, "b24-to-wa", 0, 0, None, b"", [], 1, trace.INVALID_SPAN)
        )


def graph_error(http_status: int, code: int, message: str) -> httpx.Response:
    return httpx.Response(http_status, json={"error": {"message": message, "code": code}})


def counted(outcome: str) -> float:
    labels = {"type": "window_closed", "outcome": outcome}
    return REGISTRY.get_sample_value("zaptrix_meta_operator_events_total", labels) or 0.0


@pytest.fixture
async def meta(fresh: Fakes) -> AsyncIterator[Harness]:
    settings = DispatcherSettings(
        graph_api_base_url="https://graph.test",
        channel_cache_ttl_s=0,
        credentials_cache_ttl_s=0,
        send_attempts=1,
    )
    graph = Graph()
    clients = Clients(GrpcClientSettings(mapper_addr=fresh.addr, token_keeper_addr=fresh.addr))
    graph_client = GraphClient(settings, transport=httpx.MockTransport(graph))
    producer = Producer()
    dispatcher = MetaDispatcher(settings, clients, graph_client, producer, OUT)  # type: ignore[arg-type]
    yield Harness(dispatcher, producer, graph, fresh)
    await dispatcher.aclose()
    await graph_client.aclose()
    await clients.close()


def with_template(fakes: Fakes, name: str = "hello_world", language: str = "de") -> None:
    fakes.mapper.channels[PNID].reengagement_template = name
    fakes.mapper.channels[PNID].template_language = language
    fakes.mapper.channels[PNID].connector_id = "zaptrix"


async def test_template_sent_and_operator_told_once_per_cooldown(meta: Harness) -> None:
    with_template(meta.fakes)
    conv = meta.fakes.mapper.add_conversation("4915100000001")
    assert (await meta.closed("wamid.A")) == Outcome.ok()
    (payload,) = meta.graph.sent
    assert payload["type"] == "template" and payload["to"] == "4915100000001"
    assert payload["template"] == {"name": "hello_world", "language": {"code": "de"}}
    (notice,) = meta.producer.published
    assert notice.event_id == f"wa-fail:{MEMBER}:window:wamid.A"
    assert notice.conversation_key == f"{PNID}:4915100000001"
    failure = notice.send_failure
    assert failure.template_sent is True and failure.error.code == 131047
    assert "hello_world" in failure.notice and "24 hours" in failure.notice
    assert failure.bitrix_message_id == ""  # informational: the status already reported the failed message
    assert (failure.external_chat_id, failure.bitrix_chat_id) == (conv.external_chat_id, "77")
    assert (failure.member_id, failure.line_id, failure.connector_id) == (MEMBER, 1, "zaptrix")
    assert meta.fakes.mapper.processed["wa-window:wamid.A"] == "template_sent"
    # Redelivery of the same event: nothing happens again.
    assert (await meta.closed("wamid.A")) == Outcome.duplicate()
    # Another send of the same conversation failing the same way: the template is in its cooldown.
    cooldown = counted("cooldown")
    assert (await meta.closed("wamid.B")) == Outcome.ok()
    assert len(meta.graph.sent) == 1 and len(meta.producer.published) == 1
    assert meta.fakes.mapper.processed["wa-window:wamid.B"] == "cooldown"
    assert counted("cooldown") == cooldown + 1


async def test_without_a_template_nothing_more_happens_but_it_is_counted(meta: Harness) -> None:
    meta.fakes.mapper.add_conversation("4915100000001")
    before = counted("no_template")
    assert (await meta.closed("wamid.C")) == Outcome.ok()
    assert meta.graph.sent == [] and meta.producer.published == []
    assert counted("no_template") == before + 1
    assert meta.fakes.mapper.processed["wa-window:wamid.C"] == "no_template"


async def test_unknown_conversation_or_inactive_channel_sends_nothing(meta: Harness) -> None:
    with_template(meta.fakes)
    assert (await meta.closed("wamid.D", wa_id="4900")) == Outcome.ok()
    assert meta.fakes.mapper.processed["wa-window:wamid.D"] == "unknown_conversation"
    meta.fakes.mapper.add_conversation("4915100000001")
    meta.fakes.mapper.channels[PNID].active = False
    assert (await meta.closed("wamid.E")) == Outcome.ok()
    assert meta.fakes.mapper.processed["wa-window:wamid.E"] == "channel_inactive"
    assert meta.graph.sent == [] and meta.producer.published == []


async def test_refused_template_is_reported_to_the_operator(meta: Harness) -> None:
    with_template(meta.fakes, name="no_such_template")
    meta.fakes.mapper.add_conversation("4915100000001")
    meta.graph.errors.append(graph_error(404, 132001, "(#132001) Template name does not exist"))
    assert (await meta.closed("wamid.F")) == Outcome.ok()
    (notice,) = meta.producer.published
    assert notice.send_failure.template_sent is False
    assert "could not be sent" in notice.send_failure.notice
    assert meta.fakes.mapper.processed["wa-window:wamid.F"] == "template_failed"


async def test_retries_never_send_the_template_twice(meta: Harness) -> None:
    """A transient Graph error retries the event; a notice that cannot be published after the template went
    out retries it too, and the retry only publishes the notice."""
    with_template(meta.fakes)
    meta.fakes.mapper.add_conversation("4915100000001")
    meta.graph.errors.append(graph_error(500, 131000, "(#131000) Something went wrong"))
    with pytest.raises(TransientError):
        await meta.closed("wamid.G")
    assert meta.graph.sent == [] and "wa-window:wamid.G" not in meta.fakes.mapper.processed
    meta.producer.fail = 1
    with pytest.raises(TransientError):
        await meta.closed("wamid.G")
    assert len(meta.graph.sent) == 1 and meta.producer.published == []
    assert (await meta.closed("wamid.G")) == Outcome.ok()
    assert len(meta.graph.sent) == 1
    (notice,) = meta.producer.published
    assert notice.send_failure.template_sent is True


async def test_synchronous_131047_sends_the_template_at_once(meta: Harness) -> None:
    """A send refused at once never reached the customer: its pair slot is free for the template (at the
    real pair rate of one message per 6 s a deferred template would only resend the refused text)."""
    with_template(meta.fakes)
    conv = meta.fakes.mapper.add_conversation("4915100000001", last_customer_ago_s=None)
    meta.graph.errors.append(graph_error(400, 131047, "(#131047) Re-engagement message"))
    env = operator_message(conv, "hello?", bitrix_message_id="42")
    assert (await meta.handle(env)) == Outcome.ok()
    assert [p["type"] for p in meta.graph.sent] == ["template"]
    (notice,) = meta.producer.published
    assert notice.event_id == f"wa-fail:{MEMBER}:42"
    assert notice.send_failure.template_sent is True and notice.send_failure.error.code == 131047
    assert meta.fakes.mapper.processed[env.event_id] == "failed:131047"


# --- tenancy: the event's portal, the conversation's and the channel binding's must be one -----------------


def refusals(kind: str) -> float:
    labels = {"service": "meta-dispatcher", "kind": kind}
    return REGISTRY.get_sample_value("zaptrix_cross_tenant_refusals_total", labels) or 0.0


def credential_loads(fakes: Fakes) -> list[str]:
    return [c for c in fakes.token_keeper.calls if c.startswith("GetChannelCredentials")]


async def test_an_operator_message_naming_another_portals_chat_sends_nothing_and_tells_nobody(
    meta: Harness,
) -> None:
    with_template(meta.fakes)
    conv = meta.fakes.mapper.add_conversation("4915100000001", last_customer_ago_s=90_000)  # template path
    env = operator_message(conv, "phishing")
    env.operator_message.member_id = "portal-b"
    before = refusals("message")
    with pytest.raises(PermanentError, match=r"^cross-tenant:"):
        await meta.handle(env)
    assert meta.graph.sent == [] and meta.producer.published == []  # no text, no template, no notice
    assert credential_loads(meta.fakes) == []
    assert refusals("message") == before + 1


async def test_a_channel_bound_to_another_portal_is_refused_before_its_token_is_loaded(meta: Harness) -> None:
    with_template(meta.fakes)
    conv = meta.fakes.mapper.add_conversation("4915100000001")
    meta.fakes.mapper.channels[PNID].member_id = "portal-b"  # conversation and event say MEMBER
    with pytest.raises(PermanentError, match=r"^cross-tenant:"):
        await meta.handle(operator_message(conv, "hallo"))
    before = refusals("template")
    with pytest.raises(PermanentError, match=r"^cross-tenant:"):
        await meta.closed("wamid.X")  # WindowClosed: no re-engagement template on that channel's token
    assert refusals("template") == before + 1
    assert meta.graph.sent == [] and meta.producer.published == []
    assert credential_loads(meta.fakes) == []


async def test_a_notice_goes_to_the_conversations_portal_and_never_unrouted(meta: Harness) -> None:
    conv = meta.fakes.mapper.add_conversation("4915100000001", last_customer_ago_s=90_000)  # no template
    assert (await meta.handle(operator_message(conv, "noch da?"))) == Outcome.ok()
    (notice,) = meta.producer.published
    failure = notice.send_failure
    assert (failure.member_id, failure.external_chat_id) == (conv.member_id, conv.external_chat_id)
    assert notice.conversation_key == f"{conv.phone_number_id}:{conv.wa_id}"
    unrouted = Notice("wa-fail:x", "", 7, "zaptrix_whatsapp", "1807", "1", "", "")  # no conversation
    with pytest.raises(PermanentError, match="not routed"):
        await meta.dispatcher.ctx.notifier.send(unrouted, None, "text")
    assert len(meta.producer.published) == 1
