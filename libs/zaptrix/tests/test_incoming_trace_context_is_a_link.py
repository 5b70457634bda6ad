"""Trace context from the internet is a link, never the parent (security review L1)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from opentelemetry import baggage, trace
from zaptrix import web

REMOTE = "0af7651916cd43dd8448eb211c80319c"


def request(**headers: str) -> Any:
    return SimpleNamespace(headers=headers)


def test_a_valid_traceparent_becomes_a_link() -> None:
    links = web._remote_link(request(traceparent=f"00-{REMOTE}-b7ad6b7169203331-01", baggage="k=v"))
    assert len(links) == 1
    assert format(links[0].context.trace_id, "032x") == REMOTE
    assert links[0].context.is_remote


def test_invalid_or_oversized_traceparent_is_ignored() -> None:
    assert web._remote_link(request()) == []
    assert web._remote_link(request(traceparent="00-" + "0" * 32 + "-b7ad6b7169203331-01")) == []
    assert web._remote_link(request(traceparent="garbage")) == []
    assert web._remote_link(request(traceparent="00-" + "a" * 500)) == []


def test_the_server_span_starts_from_an_empty_context() -> None:
    assert not trace.get_current_span(web._ROOT).get_span_context().is_valid
    assert baggage.get_all(web._ROOT) == {}
