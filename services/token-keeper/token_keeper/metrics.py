"""Prometheus metrics of token-keeper (the shared zaptrix.metrics also count OAuth calls by outcome)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REFRESHES = Counter(
    "zaptrix_token_refreshes_total",
    "Bitrix24 OAuth refreshes by trigger (on_use, rejected, idle) and outcome "
    "(ok, invalid_grant, invalid_client, rejected, unavailable, error)",
    ["trigger", "outcome"],
)
REFRESH_SECONDS = Histogram(
    "zaptrix_token_refresh_seconds",
    "Duration of a refresh while the portal row is locked (OAuth call and retries included)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20),
)
PORTALS_BY_STATE = Gauge(
    "zaptrix_token_portals", "Portals by state (all replicas report the same)", ["state"]
)
PORTALS_NEEDING_REAUTH = Gauge(
    "zaptrix_token_portals_needing_reauth",
    "Portals whose refresh token Bitrix24 refused for good: an operator must re-authorise them",
)
TOKEN_CACHE = Counter(
    "zaptrix_token_cache_total",
    "GetAccessToken answered from the in-process cache (hit) or not (miss)",
    ["result"],
)
RPC_SECONDS = Histogram(
    "zaptrix_token_keeper_rpc_seconds",
    "TokenKeeper RPC latency by method and gRPC status code",
    ["method", "code"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DECRYPT_FAILURES = Counter(
    "zaptrix_token_decrypt_failures_total",
    "Stored secrets that could not be decrypted (missing key id or tampered row)",
    ["table"],
)
