"""Prometheus metrics of the mapper (the grpc OTel instrumentation gives traces, not metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RPCS = Counter(
    "zaptrix_mapper_rpcs_total",
    "Mapper RPCs handled, by method and gRPC status code",
    ["method", "code"],
)
RPC_SECONDS = Histogram(
    "zaptrix_mapper_rpc_seconds",
    "Time to handle one mapper RPC (server side, excluding transport)",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
CACHE_LOOKUPS = Counter(
    "zaptrix_mapper_cache_lookups_total",
    "In-process cache lookups by cache and result (hit, miss)",
    ["cache", "result"],
)
CACHE_ENTRIES = Gauge("zaptrix_mapper_cache_entries", "Entries held by an in-process cache", ["cache"])
CONVERSATIONS_CREATED = Counter("zaptrix_mapper_conversations_created_total", "Conversations created")
IDENTITY_MERGES = Counter(
    "zaptrix_mapper_identity_merges_total",
    "Conversations merged into another: the same person by phone or BSUID",
)
DEDUPE_EXPIRED = Counter("zaptrix_mapper_dedupe_expired_total", "Processed-event records deleted by expiry")
DEDUPE_EXPIRY_ERRORS = Counter("zaptrix_mapper_dedupe_expiry_errors_total", "Expiry sweeps that failed")

# Cost ledger. Labels: the channel (phone_number_id; a deployment has tens to a few hundred numbers, and
# the portal follows from the channel, so it would add no series), Meta's category (about a dozen
# values, bounded by meta-ingress to [a-z0-9_]{1,40}) and billable. Not the pricing type (it follows
# from category and billable in practice) nor the month (Prometheus has time). Per-portal monthly
# numbers come from the ledger table (zaptrix-admin usage), not from this counter.
USAGE_MESSAGES = Counter(
    "zaptrix_usage_messages_total",
    "Delivered business messages counted in the cost ledger (once per wamid), by channel, category, billable",
    ["phone_number_id", "category", "billable"],
)

# Retention (mapper-retention, or mapper-server with retention_interval_s): rows removed per table, and
# when a whole sweep last succeeded (alert when it is stale: charts/zaptrix prometheusrule).
RETENTION_REMOVED = Counter(
    "zaptrix_retention_removed_total",
    "Rows removed by the retention job (and erase), by table",
    ["table"],
)
RETENTION_LAST_SUCCESS = Gauge(
    "zaptrix_retention_last_success_timestamp_seconds",
    "Unix time the last complete retention sweep finished",
)
RETENTION_ERRORS = Counter("zaptrix_retention_errors_total", "Retention sweeps that failed")
