"""One trace per message, from the webhook to the far platform's API call, across every service."""

from __future__ import annotations

from zaptrix_testing.seeding import SANDBOX_MEMBER_ID
from zaptrix_testing.waiting import eventually

from tests.e2e.flows import customer, new_customer, operator_says, wait_for_messages, wait_sent
from tests.e2e.otlp import ReceivedSpan
from tests.system import System

SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5  # OTLP SpanKind values


def _trace_with(system: System, predicate: str) -> list[ReceivedSpan]:
    for spans in system.otlp.traces().values():
        if any(predicate in (s.attributes.get("messaging.message.id", "")) for s in spans):
            return spans
    return []


def _has(spans: list[ReceivedSpan], service: str, kind: int) -> bool:
    return any(s.service == service and s.kind == kind for s in spans)


async def test_customer_message_is_one_trace_from_webhook_to_imconnector(system: System) -> None:
    wa_id = new_customer()
    from tests.e2e.flows import customer_says

    sent = await customer_says(system, wa_id, type="text", text="Spurensuche")
    await wait_for_messages(system, wa_id, 1)
    event_id = f"wa:{sent['wamid']}"
    spans: list[ReceivedSpan] = []

    async def complete() -> bool:
        nonlocal spans
        spans = _trace_with(system, event_id)
        # Each process exports in its own batches: wait for both ends of the trace.
        reached = any("imconnector.send.messages" in s.attributes.get("url.full", "") + s.name for s in spans)
        # The mapper exports its spans in its own batches too, possibly after the far API call's; the
        # dispatcher's CONSUMER span ends after its children (the API call), so it may come in a later batch.
        return (
            reached
            and _has(spans, "meta-ingress", SERVER)
            and _has(spans, "mapper", SERVER)
            and _has(spans, "bitrix-dispatcher", CONSUMER)
        )

    await eventually(complete, 20, "the trace to reach imconnector.send.messages")
    services = {s.service for s in spans}
    # token-keeper appears only when the dispatcher's token cache misses (not per message, by design).
    assert {"meta-ingress", "bitrix-dispatcher", "mapper"} <= services, services
    kinds = {(s.service, s.kind) for s in spans}
    # meta-ingress: one span per webhook (its answer waits for Kafka's acks): the records carry the SERVER
    # span's context, so the dispatcher's CONSUMER span is its child; no PRODUCER span of its own.
    assert ("meta-ingress", SERVER) in kinds and ("meta-ingress", PRODUCER) not in kinds
    (webhook,) = [s for s in spans if s.service == "meta-ingress" and s.kind == SERVER]
    consumed = [s for s in spans if s.service == "bitrix-dispatcher" and s.kind == CONSUMER]
    assert any(s.parent_span_id == webhook.span_id for s in consumed), (
        "the CONSUMER span is the webhook's child"
    )
    assert ("bitrix-dispatcher", CONSUMER) in kinds and ("mapper", SERVER) in kinds
    assert any(
        (s.service == "mapper" and s.name.startswith(("SELECT", "INSERT", "UPDATE")))
        or "postgres" in str(s.attributes.get("db.system", ""))
        for s in spans
    ), "asyncpg spans under the mapper"
    roots = [s for s in spans if not s.parent_span_id]
    assert len(roots) == 1 and roots[0].service == "meta-ingress", [(r.service, r.name) for r in roots]
    assert not any("auth=" in s.attributes.get("url.full", "") for s in spans), "no credentials in span URLs"


async def test_operator_reply_is_one_trace_from_the_bitrix_event_to_the_graph_api(system: System) -> None:
    wa_id = await customer(system)
    reply = await operator_says(system, wa_id, "Spur zurück")
    await wait_sent(system, wa_id)
    event_id = f"b24:{SANDBOX_MEMBER_ID}:{reply['im']['message_id']}"
    spans: list[ReceivedSpan] = []

    async def complete() -> bool:
        nonlocal spans
        spans = _trace_with(system, event_id)
        sent = any(
            s.service == "meta-dispatcher"
            and s.kind == CLIENT
            and "/messages" in s.attributes.get("url.full", "")
            for s in spans
        )
        return sent and _has(spans, "bitrix-ingress", SERVER) and _has(spans, "mapper", SERVER)

    await eventually(complete, 20, "the trace to reach the Graph API call")
    roots = [s for s in spans if not s.parent_span_id]
    assert len(roots) == 1 and roots[0].service == "bitrix-ingress" and roots[0].kind == SERVER
    assert {"bitrix-ingress", "meta-dispatcher", "mapper"} <= {s.service for s in spans}
