"""Read a message's trace from Jaeger's query API and render it as a tree (`zaptrix-dev trace`).

The Jaeger binary built from the Go module proxy serves the query API but not the web UI (that is a
separate JavaScript project no reachable registry ships), so locally the trace is read through the API.
With a full Jaeger (e.g. in a cluster) the same trace id opens in the UI.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx

# Spans that carry the event id, per producing service (see zaptrix.kafka: messaging.message.id).
SEARCH_SERVICES = ("meta-ingress", "bitrix-ingress", "meta-dispatcher", "bitrix-dispatcher")


@dataclass
class Node:
    span_id: str
    service: str
    name: str
    start_us: int
    duration_us: int
    error: bool
    children: list[Node] = field(default_factory=list)


def event_ids(ref: str) -> list[str]:
    """A wamid or a full event id; a bare wamid may be a customer message or an operator reply's status."""
    if ":" in ref:
        return [ref]
    return [f"wa:{ref}", ref]


def find_trace(client: httpx.Client, jaeger_url: str, ref: str) -> dict[str, Any] | None:
    if len(ref) in (16, 32) and all(c in "0123456789abcdef" for c in ref):
        resp = client.get(f"{jaeger_url}/api/traces/{ref}")
        if resp.status_code == 200 and resp.json().get("data"):
            return dict(resp.json()["data"][0])
    for event_id in event_ids(ref):
        for service in SEARCH_SERVICES:
            resp = client.get(
                f"{jaeger_url}/api/traces",
                params={
                    "service": service,
                    "tags": json.dumps({"messaging.message.id": event_id}),
                    "limit": 1,
                    "lookback": "6h",
                },
            )
            if resp.status_code == 200 and resp.json().get("data"):
                return dict(resp.json()["data"][0])
    return None


def tree(trace: dict[str, Any]) -> list[Node]:
    processes = {pid: p.get("serviceName", "?") for pid, p in trace.get("processes", {}).items()}
    nodes: dict[str, Node] = {}
    parents: dict[str, str] = {}
    for span in trace.get("spans", []):
        tags = {t["key"]: t.get("value") for t in span.get("tags", [])}
        error = tags.get("error") is True or tags.get("otel.status_code") == "ERROR"
        nodes[span["spanID"]] = Node(
            span["spanID"],
            processes.get(span.get("processID", ""), "?"),
            span["operationName"],
            int(span["startTime"]),
            int(span["duration"]),
            error,
        )
        for ref in span.get("references", []):
            if ref.get("refType") == "CHILD_OF":
                parents[span["spanID"]] = ref["spanID"]
    roots: list[Node] = []
    for span_id, node in nodes.items():
        parent = nodes.get(parents.get(span_id, ""))
        (parent.children if parent else roots).append(node)
    for node in nodes.values():
        node.children.sort(key=lambda n: n.start_us)
    return sorted(roots, key=lambda n: n.start_us)


def render(trace: dict[str, Any]) -> list[str]:
    roots = tree(trace)
    if not roots:
        return ["(empty trace)"]
    origin = roots[0].start_us
    services = sorted({n.service for n in _walk(roots)})
    lines = [
        f"trace {trace.get('traceID')}  ({len(list(_walk(roots)))} spans, services: {', '.join(services)})"
    ]

    def emit(node: Node, depth: int) -> None:
        offset = (node.start_us - origin) / 1000
        mark = "  !" if node.error else ""
        lines.append(
            f"{offset:9.1f} ms {node.duration_us / 1000:8.1f} ms  {'  ' * depth}{node.service}: {node.name}{mark}"
        )
        for child in node.children:
            emit(child, depth + 1)

    for root in roots:
        emit(root, 0)
    return lines


def _walk(nodes: list[Node]) -> list[Node]:
    out: list[Node] = []
    for node in nodes:
        out.append(node)
        out += _walk(node.children)
    return out
