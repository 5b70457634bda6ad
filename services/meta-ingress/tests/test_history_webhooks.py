"""The coexistence `history` webhook (Meta's 180-day chat history import, research-2026-12.md 1.6) →
HistoryMessage events for their own topic, and the hostile shapes it may come in."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meta_ingress.web.normalize import (
    Normalized,
    WebhookShapeError,
    WebhookTooLarge,
    normalize,
    parse_envelope,
)
from meta_support import DISPLAY, PNID, WABA

CUSTOMER = "16505551234"


def media_url(pnid: str, media_id: str, filename: str) -> str:
    return f"https://mi/media/{pnid}/{media_id}?fn={filename}"


def history_hook(*chunks: dict[str, Any]) -> dict[str, Any]:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": DISPLAY, "phone_number_id": PNID},
        "history": list(chunks),
    }
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": WABA, "changes": [{"field": "history", "value": value}]}],
    }


def run(payload: Any, max_updates: int = 1000) -> Normalized:
    return normalize(parse_envelope(payload, max_updates), media_url)


def message(n: int, *, business: bool = False, **over: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "from": DISPLAY if business else CUSTOMER,
        "id": f"wamid.H{n}",
        "timestamp": str(1760000000 + n * 60),
        "type": "text",
        "text": {"body": f"line {n}"},
        "history_context": {"status": "READ" if business else "DELIVERED"},
    }
    if business:
        out["to"] = CUSTOMER
    return out | over


def chunk(
    messages: list[dict[str, Any]], *, phase: int = 1, order: int = 1, progress: int = 40
) -> dict[str, Any]:
    return {
        "metadata": {"phase": phase, "chunk_order": order, "progress": progress},
        "threads": [{"id": CUSTOMER, "messages": messages}],
    }


def test_a_history_chunk_becomes_history_messages_in_order_for_their_own_topic() -> None:
    # Meta's order within a chunk is not promised: the events go out oldest first.
    result = run(history_hook(chunk([message(2, business=True), message(1), message(3)])))
    assert result.envelopes == [] and result.messages == 0  # nothing on the live topic
    assert result.count == 3
    assert [e.event_id for e in result.history] == [
        "wa-history:wamid.H1",
        "wa-history:wamid.H2",
        "wa-history:wamid.H3",
    ]
    assert {e.conversation_key for e in result.history} == {f"{PNID}:{CUSTOMER}"}
    first, second = result.history[0].history_message, result.history[1].history_message
    assert (first.wa_id, first.text, first.from_business, first.status) == (
        CUSTOMER,
        "line 1",
        False,
        "DELIVERED",
    )
    assert (second.text, second.from_business, second.status) == ("line 2", True, "READ")
    assert (first.phase, first.chunk_order, first.progress) == (1, 1, 40)
    assert first.sent_at.seconds == 1760000060


def test_a_media_placeholder_is_named() -> None:
    result = run(history_hook(chunk([message(1, type="media_placeholder", text=None)])))
    (env,) = result.history
    assert env.history_message.type == "media_placeholder"
    assert env.history_message.text == "📎 a media file (not imported)"


def test_a_declined_history_is_a_reported_error_not_an_event() -> None:
    declined = {
        "errors": [
            {
                "code": 2593109,
                "title": "History sharing is turned off by the business",
                "message": "History sharing is turned off by the business",
                "error_data": {"details": "History sharing is turned off by the business"},
            }
        ]
    }
    result = run(history_hook(declined))
    assert result.history == [] and [e[1] for e in result.system_errors] == [2593109]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (history_hook({"threads": "x"}), "value.threads"),
        (history_hook({"threads": [{"messages": [message(1)]}]}), r"threads\[0\].id is missing"),
        (history_hook({"threads": [{"id": "9" * 200, "messages": []}]}), "too long"),
        (history_hook({"metadata": {"phase": 7}, "threads": []}), "phase must be"),
        (history_hook({"metadata": {"progress": "100"}, "threads": []}), "progress must be"),
        (history_hook(chunk([message(1, id=None)])), "id is missing"),
    ],
)
def test_hostile_history_shapes_are_refused_with_a_reason(payload: dict[str, Any], reason: str) -> None:
    with pytest.raises(WebhookShapeError, match=reason):
        run(payload)


def test_history_messages_count_against_the_cap() -> None:
    many = [message(i) for i in range(10)]
    with pytest.raises(WebhookTooLarge):  # 1 chunk + 1 thread + 10 messages
        run(history_hook(chunk(many)), max_updates=11)
    assert len(run(history_hook(chunk(many)), max_updates=12).history) == 10


def test_a_deep_history_payload_is_a_shape_error() -> None:
    deep: Any = "x"
    for _ in range(600):
        deep = {"text": {"body": deep}}
    with pytest.raises((WebhookShapeError, RecursionError)):
        run(history_hook(chunk([message(1, text=deep)])))


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(
    chunks=st.lists(
        st.dictionaries(st.sampled_from(["metadata", "threads", "errors"]), _json, max_size=3), max_size=3
    ),
    messages=st.lists(
        st.dictionaries(
            st.sampled_from(["from", "id", "type", "text", "timestamp", "history_context"]), _json, max_size=6
        ),
        max_size=3,
    ),
)
def test_fuzz_only_shape_errors_escape(chunks: list[dict[str, Any]], messages: list[dict[str, Any]]) -> None:
    try:
        run(history_hook(*chunks, {"threads": [{"id": CUSTOMER, "messages": messages}]}))
    except WebhookShapeError:
        pass
