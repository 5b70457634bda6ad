"""Prometheus metrics shared by every process. Service-specific metrics live beside their service."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

EXTERNAL_CALLS = Counter(
    "zaptrix_external_api_calls_total",
    "Calls to Meta's Graph API, Bitrix24 REST and OAuth by outcome (ok or the platform's error code)",
    ["platform", "method", "outcome"],
)
EXTERNAL_LATENCY = Histogram(
    "zaptrix_external_api_seconds", "Latency of external API calls", ["platform", "method"]
)
EVENTS_PRODUCED = Counter(
    "zaptrix_events_produced_total", "Events produced to Kafka", ["topic", "event_type"]
)
EVENTS_HANDLED = Counter(
    "zaptrix_events_handled_total",
    "Events consumed, by outcome (ok, duplicate, retried, held, dead_lettered)",
    ["topic", "event_type", "outcome"],
)
DEAD_LETTERS = Counter(
    "zaptrix_dead_letters_total", "Events moved to a dead-letter topic", ["topic", "reason"]
)
REQUEUED = Counter(
    "zaptrix_retry_requeued_total",
    "Retry records not yet due moved to the tail of their partition so that due ones behind could go",
    ["topic"],
)
CONSUMER_LAG = Gauge(
    "zaptrix_kafka_consumer_lag", "Records behind the end of the partition", ["topic", "partition"]
)
HANDLE_SECONDS = Histogram("zaptrix_event_handle_seconds", "Time to handle one consumed event", ["topic"])
EVENT_AGE = Histogram(
    "zaptrix_event_age_seconds",
    "End to end: from an event's record in its main topic (the webhook or Bitrix24 event accepted) to its "
    "successful handling (delivered to the other platform), first attempts only (retries count in "
    "zaptrix_events_handled_total)",
    ["topic"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
CROSS_TENANT_REFUSALS = Counter(
    "zaptrix_cross_tenant_refusals_total",
    "Events refused because they name a chat (or channel) that is not their portal's own. "
    "service: bitrix-ingress, bitrix-dispatcher, meta-dispatcher; kind: one of CROSS_TENANT_KINDS",
    ["service", "kind"],
)
# The fixed values of CROSS_TENANT_REFUSALS's kind label (anything else is counted as "other").
CROSS_TENANT_KINDS = frozenset({"message", "edit", "delete", "read", "template", "notice", "other"})


def count_cross_tenant(service: str, kind: str) -> None:
    CROSS_TENANT_REFUSALS.labels(service, kind if kind in CROSS_TENANT_KINDS else "other").inc()


def serve_metrics(port: int, address: str = "0.0.0.0") -> None:
    """Expose /metrics on its own port (for processes without an HTTP server). 0 disables."""
    if port:
        start_http_server(port, addr=address)
