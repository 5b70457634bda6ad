"""Templates in the meta dispatcher, in process: the /template command checked against the catalogue and
sent as a Graph template message, the notices for what is refused, the catalogue synced from the Graph API
(cursor pages) and kept current by the template webhooks. gRPC fakes of mapper and token-keeper (checked
against the real services by tests/contract), the Graph API behind httpx.MockTransport."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from meta_ingress.dispatcher.process import MetaDispatcher
from meta_ingress.graph.client import GraphClient
from meta_ingress.settings import DispatcherSettings
from meta_support import MEMBER, PNID, TOKEN, WABA, Fakes, operator_message
from opentelemetry import trace
from zaptrix.clients import Clients
from zaptrix.kafka import Outcome, Received
from zaptrix.settings import GrpcClientSettings
from zaptrix.v1 import events_pb2, mapper_pb2

OUT = "wa-to-b24-test"
CUSTOMER = "4915100000001"
ORDER = [
    {"type": "HEADER", "format": "TEXT", "text": "Order {{1}}"},
    {"type": "BODY", "text": "Your order {{1}} ships on {{2}}."},
]
PROMO_NAMED = [{"type": "BODY", "text": "Hi {{first_name}}, {{offer}} today"}]
INVOICE = [{"type": "HEADER", "format": "DOCUMENT"}, {"type": "BODY", "text": "Invoice attached"}]


def listed(tid: str, name: str, components: list[Any], status: str = "APPROVED", **kw: Any) -> dict[str, Any]:
    return {
        "id": tid,
        "name": name,
        "language": kw.get("language", "en_US"),
        "status": status,
        "category": kw.get("category", "UTILITY"),
        "components": components,
        "quality_score": {"score": "GREEN"},
        "parameter_format": kw.get("parameter_format", "POSITIONAL"),
    }


@dataclass
class Producer:
    published: list[events_pb2.Envelope] = field(default_factory=list)

    async def publish(self, topic: str, envelopes: Sequence[events_pb2.Envelope]) -> None:
        assert topic == OUT
        self.published.extend(envelopes)


@dataclass
class Graph:
    """GET message_templates in pages of two (cursor pagination); POST messages answered 200 or an error."""

    templates: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    errors: list[httpx.Response] = field(default_factory=list)
    pages: int = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        if request.method == "GET":
            assert request.url.path.endswith(f"/{WABA}/message_templates")
            assert "quality_score" in request.url.params["fields"]
            self.pages += 1
            start = int(request.url.params.get("after") or 0)
            page = self.templates[start : start + 2]
            paging: dict[str, Any] = {"cursors": {"before": str(start), "after": str(start + 2)}}
            if start + 2 < len(self.templates):
                paging["next"] = f"https://graph.test/next?after={start + 2}"
            return httpx.Response(200, json={"data": page, "paging": paging})
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

    async def handle(self, env: events_pb2.Envelope) -> Outcome | None:
        return await self.dispatcher.handle(
            Received(env, "b24-to-wa", 0, 0, None, b"", [], 1, trace.INVALID_SPAN)
        )

    async def sync(self, *templates: dict[str, Any]) -> None:
        self.graph.templates = list(templates)
        request = events_pb2.TemplateSyncRequest(member_id=MEMBER, phone_number_id=PNID, reason="install")
        env = events_pb2.Envelope(event_id="tpl-sync:1", template_sync_request=request)
        assert await self.handle(env) == Outcome.ok()

    async def command(self, text: str, **fields: Any) -> events_pb2.SendFailure | None:
        """Send an operator message; the notice it caused (None when none)."""
        conv = self.fakes.mapper.add_conversation(CUSTOMER, last_customer_ago_s=3 * 86400)  # window closed
        before = len(self.producer.published)
        assert await self.handle(operator_message(conv, text, **fields)) == Outcome.ok()
        notices = self.producer.published[before:]
        return notices[-1].send_failure if notices else None


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


def catalogue(h: Harness) -> dict[str, mapper_pb2.MessageTemplate]:
    return {t.name: t for t in h.fakes.mapper.templates.values()}


async def test_a_sync_reads_every_page_and_replaces_the_catalogue(meta: Harness) -> None:
    await meta.sync(*(listed(str(i), f"t{i}", ORDER) for i in range(5)))
    assert meta.graph.pages == 3 and sorted(catalogue(meta)) == ["t0", "t1", "t2", "t3", "t4"]
    row = catalogue(meta)["t0"]
    assert (row.status, row.quality, row.waba_id) == ("APPROVED", "GREEN", WABA)
    assert json.loads(row.components_json) == ORDER
    await meta.sync(listed("9", "only", ORDER))
    assert sorted(catalogue(meta)) == ["only"]


async def test_the_command_sends_a_template_outside_the_window(meta: Harness) -> None:
    await meta.sync(listed("1", "order_update", ORDER))
    assert await meta.command("/template order_update 12345 | Friday | header=A-77") is None
    (payload,) = meta.graph.sent
    assert payload["type"] == "template" and payload["to"] == CUSTOMER
    assert payload["template"] == {
        "name": "order_update",
        "language": {"code": "en_US"},
        "components": [
            {"type": "header", "parameters": [{"type": "text", "text": "A-77"}]},
            {
                "type": "body",
                "parameters": [{"type": "text", "text": "12345"}, {"type": "text", "text": "Friday"}],
            },
        ],
    }
    assert "wamid.T1" in meta.fakes.mapper.links


async def test_named_variables_and_an_explicit_language(meta: Harness) -> None:
    await meta.sync(
        listed("1", "promo", PROMO_NAMED, parameter_format="NAMED", language="pt_BR"),
        listed("2", "promo", PROMO_NAMED, parameter_format="NAMED", language="en_US"),
    )
    assert await meta.command("/template promo@pt_BR offer=20% off | first_name=Ana") is None
    (payload,) = meta.graph.sent
    assert payload["template"]["language"] == {"code": "pt_BR"}
    assert payload["template"]["components"][0]["parameters"] == [
        {"type": "text", "text": "Ana", "parameter_name": "first_name"},
        {"type": "text", "text": "20% off", "parameter_name": "offer"},
    ]


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("/template nope 1", "There is no template “nope”"),
        ("/template order_update 12345 | header=A", "expects 2 value(s)"),
        ("/template order_update 1 | 2", "header of “order_update” needs a value"),
        ("/template order_update 1 |    | header=A", "Value 2 is empty"),
        ("/template order_update 1 | " + "x" * 1025 + " | header=A", "at most 1024"),
        ("/template order_update 1 | a      b | header=A", "more than four spaces"),
        ("/template paused_one", "is paused at WhatsApp"),
        ("/template order_update@de 1 | 2 | header=A", "has no de version"),
        ("/template invoice", "attach the document"),
        ("/template Bad-Name", "is not a template name"),
    ],
)
async def test_what_does_not_fit_the_catalogue_is_refused_with_a_notice(
    meta: Harness, text: str, said: str
) -> None:
    await meta.sync(
        listed("1", "order_update", ORDER),
        listed("2", "paused_one", [{"type": "BODY", "text": "hi"}], status="PAUSED"),
        listed("3", "invoice", INVOICE),
    )
    notice = await meta.command(text)
    assert notice is not None and said in notice.notice, notice
    assert notice.notice.startswith("Template not sent:")
    assert meta.graph.sent == []


async def test_a_marketing_template_to_an_opted_out_customer_is_refused(meta: Harness) -> None:
    await meta.sync(listed("1", "promo", [{"type": "BODY", "text": "hi"}], category="MARKETING"))
    stop = mapper_pb2.CustomerConsent(
        phone_number_id=PNID, wa_id=CUSTOMER, category="marketing_messages", value="stop"
    )
    meta.fakes.mapper.consents[(PNID, CUSTOMER, "marketing_messages")] = stop
    notice = await meta.command("/template promo")
    assert notice is not None and "stopped marketing messages" in notice.notice
    assert meta.graph.sent == []


@pytest.mark.parametrize(
    ("code", "said"),
    [
        (132000, "number of values"),
        (132001, "does not exist"),
        (132012, "wrong format"),
        (132015, "paused"),
        (131062, "username"),
        (131050, "stopped marketing messages"),
    ],
)
async def test_graph_template_errors_become_notices(meta: Harness, code: int, said: str) -> None:
    await meta.sync(listed("1", "hello", [{"type": "BODY", "text": "hi"}]))
    pages = meta.graph.pages
    meta.graph.errors.append(httpx.Response(400, json={"error": {"message": "refused", "code": code}}))
    notice = await meta.command("/template hello")
    assert notice is not None and said in notice.notice and notice.error.code == code
    # A template Meta does not know (or paused) means the catalogue is stale: it is read again.
    assert (meta.graph.pages > pages) == (code in (132001, 132015))


def status_update(template_id: str, event: str, at: int) -> events_pb2.Envelope:
    s = events_pb2.TemplateStatusUpdate(waba_id=WABA, template_id=template_id, event=event)
    env = events_pb2.Envelope(
        event_id=f"wa-tpl-status:{WABA}:{template_id}:{at}:{event}", template_status_update=s
    )
    env.occurred_at.seconds = at
    return env


async def test_a_paused_template_leaves_at_once_and_a_new_approval_syncs(meta: Harness) -> None:
    await meta.sync(listed("1", "hello", [{"type": "BODY", "text": "hi"}]))
    future = 4_000_000_000 // 2  # after the sync's time
    assert await meta.handle(status_update("1", "PAUSED", future)) == Outcome.ok()
    assert catalogue(meta)["hello"].status == "PAUSED"
    notice = await meta.command("/template hello")
    assert notice is not None and "paused" in notice.notice and meta.graph.sent == []
    quality = events_pb2.TemplateQualityUpdate(waba_id=WABA, template_id="1", new_quality="RED")
    env = events_pb2.Envelope(event_id="q", template_quality_update=quality)
    env.occurred_at.seconds = future + 1
    assert await meta.handle(env) == Outcome.ok()
    assert catalogue(meta)["hello"].quality == "RED"
    # A template approved that the catalogue does not hold yet: the WABA's channels are synced again.
    meta.graph.templates.append(listed("2", "fresh", [{"type": "BODY", "text": "new"}]))
    assert await meta.handle(status_update("2", "APPROVED", future + 2)) == Outcome.ok()
    assert catalogue(meta)["fresh"].status == "APPROVED"


async def test_reinstated_is_approved_again_and_flagged_changes_no_status(meta: Harness) -> None:
    await meta.sync(listed("1", "hello", [{"type": "BODY", "text": "hi"}]))
    future = 4_000_000_000 // 2
    assert await meta.handle(status_update("1", "PAUSED", future)) == Outcome.ok()
    assert await meta.handle(status_update("1", "REINSTATED", future + 1)) == Outcome.ok()
    assert catalogue(meta)["hello"].status == "APPROVED"
    assert await meta.handle(status_update("1", "FLAGGED", future + 2)) == Outcome.ok()
    assert catalogue(meta)["hello"].status == "APPROVED"
