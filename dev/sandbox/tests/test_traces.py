"""`zaptrix-dev trace`: Jaeger's query API shape rendered as one tree across services."""

from __future__ import annotations

from typing import Any

from zaptrix_sandbox.traces import event_ids, render, tree


def _span(
    span_id: str, name: str, pid: str, start: int, parent: str | None = None, **tags: Any
) -> dict[str, Any]:
    return {
        "spanID": span_id,
        "operationName": name,
        "processID": pid,
        "startTime": start,
        "duration": 1500,
        "references": [{"refType": "CHILD_OF", "spanID": parent}] if parent else [],
        "tags": [{"key": k, "value": v} for k, v in tags.items()],
    }


TRACE = {
    "traceID": "abc",
    "processes": {"p1": {"serviceName": "meta-ingress"}, "p2": {"serviceName": "bitrix-dispatcher"}},
    "spans": [
        _span("c", "POST", "p2", 1_000_300, parent="b", error=True),
        _span("a", "POST /webhooks/meta", "p1", 1_000_000),
        _span("b", "zaptrix.wa-to-b24.v1 process", "p2", 1_000_200, parent="a"),
    ],
}


def test_spans_become_one_tree_in_time_order() -> None:
    roots = tree(TRACE)
    assert [r.name for r in roots] == ["POST /webhooks/meta"]
    assert roots[0].children[0].service == "bitrix-dispatcher"
    assert roots[0].children[0].children[0].error


def test_render_shows_services_offsets_and_errors() -> None:
    lines = render(TRACE)
    assert "3 spans" in lines[0] and "bitrix-dispatcher, meta-ingress" in lines[0]
    assert lines[1].strip().startswith("0.0 ms")
    assert lines[3].endswith("bitrix-dispatcher: POST  !")


def test_a_bare_wamid_is_looked_up_as_a_customer_message_first() -> None:
    assert event_ids("wamid.X") == ["wa:wamid.X", "wamid.X"]
    assert event_ids("b24:m:1") == ["b24:m:1"]
