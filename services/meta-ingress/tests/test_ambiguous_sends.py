"""A send whose outcome is unknown (a timeout after the request left) is not resent at once: it is noted on
the record and reconciled with the status webhook that echoes its part id (biz_opaque_callback_data).

In process: the kit's gRPC fakes, the Graph API behind httpx.MockTransport (a read timeout after taking the
request), records handled as the consumer hands them over (effects of earlier attempts included).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from meta_ingress.dispatcher.process import MetaDispatcher
from meta_ingress.graph.client import GraphClient
from meta_ingress.settings import DispatcherSettings
from meta_support import PNID, Fakes, operator_message
from opentelemetry import trace
from prometheus_client import REGISTRY
from zaptrix.clients import Clients
from zaptrix.kafka import Outcome, Received, TransientError
from zaptrix.settings import GrpcClientSettings
from zaptrix.v1 import events_pb2


@dataclass
class Graph:
    """Takes every POST /messages; the first ``time_out`` of them time out after Meta took them."""

    taken: list[dict[str, Any]] = field(default_factory=list)
    time_out: int = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.taken.append(json.loads(request.content))
        if self.time_out > 0:
            self.time_out -= 1
            raise httpx.ReadTimeout("the answer did not come", request=request)
        return httpx.Response(200, json={"messages": [{"id": f"wamid.A{len(self.taken)}"}]})


@dataclass
class Harness:
    dispatcher: MetaDispatcher
    graph: Graph

    async def handle(self, env: events_pb2.Envelope, effects: dict[str, str], attempt: int) -> Outcome | None:
        rec = Received(env, "b24-to-wa", 0, 0, None, b"", [], attempt, trace.INVALID_SPAN, effects)
        return await self.dispatcher.handle(rec)


def resolved(resolution: str) -> float:
    labels = {"resolution": resolution}
    return REGISTRY.get_sample_value("zaptrix_meta_ambiguous_sends_total", labels) or 0.0


@pytest.fixture
async def meta(fresh: Fakes) -> AsyncIterator[Harness]:
    settings = DispatcherSettings(
        graph_api_base_url="https://graph.test", channel_cache_ttl_s=0, credentials_cache_ttl_s=0
    )
    graph = Graph()
    clients = Clients(GrpcClientSettings(mapper_addr=fresh.addr, token_keeper_addr=fresh.addr))
    client = GraphClient(settings, transport=httpx.MockTransport(graph))
    dispatcher = MetaDispatcher(settings, clients, client, None, "unused")  # type: ignore[arg-type]
    yield Harness(dispatcher, graph)
    await dispatcher.aclose()
    await client.aclose()
    await clients.close()


async def test_ambiguous_send_waits_for_its_echo_and_is_not_resent(meta: Harness, fresh: Fakes) -> None:
    conv = fresh.mapper.add_conversation("4915100000021")
    env = operator_message(conv, "hallo")
    meta.graph.time_out = 1
    effects: dict[str, str] = {}
    with pytest.raises(TransientError) as first:
        await meta.handle(env, effects, 1)
    assert len(meta.graph.taken) == 1  # not retried in process (send_attempts is 3)
    assert meta.graph.taken[0]["biz_opaque_callback_data"] == env.event_id
    assert effects[env.event_id].startswith("ambiguous:")
    assert first.value.retry_after is not None and first.value.retry_after >= 20

    with pytest.raises(TransientError):  # no echo yet, inside the window: wait again
        await meta.handle(env, dict(effects), 2)
    assert len(meta.graph.taken) == 1

    confirmed = resolved("confirmed")
    fresh.mapper.processed[f"sent:{PNID}:{env.event_id}"] = "wamid.ECHOED"  # the web saw the "sent" status
    assert await meta.handle(env, dict(effects), 3) == Outcome.ok()
    assert len(meta.graph.taken) == 1  # the customer got it once
    assert fresh.mapper.processed[env.event_id] == "wamid.ECHOED"
    assert resolved("confirmed") == confirmed + 1


async def test_another_tenants_number_cannot_confirm_a_send(meta: Harness, fresh: Fakes) -> None:
    conv = fresh.mapper.add_conversation("4915100000022")
    env = operator_message(conv, "hallo")
    effects = {env.event_id: f"ambiguous:{int(time.time())}"}
    fresh.mapper.processed[f"sent:999999999:{env.event_id}"] = "wamid.FOREIGN"
    with pytest.raises(TransientError):
        await meta.handle(env, effects, 2)
    assert meta.graph.taken == [] and env.event_id not in fresh.mapper.processed


async def test_no_echo_within_the_window_resends_once(meta: Harness, fresh: Fakes) -> None:
    conv = fresh.mapper.add_conversation("4915100000023")
    env = operator_message(conv, "hallo")
    effects = {env.event_id: f"ambiguous:{int(time.time()) - 121}"}
    resent = resolved("resent")
    assert await meta.handle(env, effects, 5) == Outcome.ok()
    assert len(meta.graph.taken) == 1
    assert fresh.mapper.processed[env.event_id] == "wamid.A1"
    assert resolved("resent") == resent + 1
