"""A send whose recording failed is not sent again by another replica: the retry record carries the fact
(zaptrix.kafka.effects), whichever meta-dispatcher handles it.

Real Kafka and two MetaDispatcher instances (each its own Records, pacer, Graph client), the kit's gRPC
fakes for mapper and token-keeper, the Graph API behind httpx.MockTransport.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from meta_ingress.dispatcher.process import MetaDispatcher
from meta_ingress.graph.client import GraphClient
from meta_ingress.settings import DispatcherSettings
from meta_support import Fakes, operator_message
from zaptrix.clients import Clients
from zaptrix.kafka import EventConsumer, EventProducer, Outcome, Received, per_event
from zaptrix.kafka.topics import FlowTopics
from zaptrix.settings import GrpcClientSettings, KafkaSettings

FlowKafka = tuple[KafkaSettings, FlowTopics, EventProducer]


@dataclass
class Graph:
    """Every POST /messages the replicas made; answers 200 with a new wamid."""

    sent: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(json.loads(request.content))
        return httpx.Response(200, json={"messages": [{"id": f"wamid.R{len(self.sent)}"}]})


async def replica(
    kafka: FlowKafka,
    group: str,
    fakes: Fakes,
    graph: Graph,
    until: Callable[[Received, Outcome | None], bool],
    seen: list[Received],
) -> None:
    """One meta-dispatcher replica (fresh process state) consuming until ``until`` says stop."""
    settings, topics, producer = kafka
    dispatcher_settings = DispatcherSettings(
        graph_api_base_url="https://graph.test",
        channel_cache_ttl_s=0,
        credentials_cache_ttl_s=0,
        send_attempts=1,
    )
    clients = Clients(GrpcClientSettings(mapper_addr=fakes.addr, token_keeper_addr=fakes.addr))
    client = GraphClient(dispatcher_settings, transport=httpx.MockTransport(graph))
    dispatcher = MetaDispatcher(dispatcher_settings, clients, client, producer, topics.dlq + "-notices")
    stopped = asyncio.Event()

    async def handle(rec: Received) -> Outcome | None:
        seen.append(rec)
        try:
            outcome = await dispatcher.handle(rec)
        except Exception:
            if until(rec, None):
                stopped.set()  # the consumer finishes this batch (retry record, commit) and stops
            raise
        if until(rec, outcome):
            stopped.set()
        return outcome

    consumer = EventConsumer(
        settings, topics, group, per_event(handle), producer, client_id=group, retry_base_s=0.1
    )
    try:
        async with asyncio.timeout(60):
            await consumer.run(stopped)
    finally:
        await dispatcher.aclose()
        await client.aclose()
        await clients.close()


async def test_another_replica_records_the_send_instead_of_sending_again(
    flow_kafka: Callable[[int], Awaitable[FlowKafka]], fresh: Fakes
) -> None:
    kafka = await flow_kafka(1)
    wa = "49" + str(uuid.uuid4().int % 10**10).zfill(10)
    conv = fresh.mapper.add_conversation(wa)
    env = operator_message(conv, "only once, whichever replica")
    fresh.mapper.fail_mark = 4  # every in-process attempt of the first replica: the event goes to retry
    await kafka[2].publish(kafka[1].main, [env])
    group = f"meta-dispatcher-{uuid.uuid4().hex[:6]}"
    graph = Graph()
    first: list[Received] = []
    await replica(kafka, group, fresh, graph, lambda rec, _: True, first)
    assert [r.attempt for r in first] == [1]
    assert len(graph.sent) == 1 and env.event_id not in fresh.mapper.processed

    second: list[Received] = []
    await replica(kafka, group, fresh, graph, lambda rec, out: out is not None, second)
    assert [r.attempt for r in second] == [2]
    assert len(graph.sent) == 1, graph.sent  # the customer got it once
    assert fresh.mapper.processed[env.event_id] == "wamid.R1"
