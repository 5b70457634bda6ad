"""meta-ingress's own Prometheus metrics (shared ones live in zaptrix.metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

# --- web -------------------------------------------------------------------------------------------
WEBHOOKS = Counter(
    "zaptrix_meta_webhooks_total",
    "Meta webhook POSTs by outcome (ok, ignored, missing_signature, bad_signature, malformed, "
    "unknown_channel, dependency_unavailable, kafka_unavailable)",
    ["outcome"],
)
SIGNATURE_FAILURES = Counter(
    "zaptrix_meta_signature_failures_total", "Webhooks refused by X-Hub-Signature-256", ["reason"]
)
INBOUND_MESSAGES = Counter(
    "zaptrix_meta_inbound_messages_total",
    "Customer messages normalized from webhooks, by Cloud API type",
    ["type"],
)
INBOUND_STATUSES = Counter(
    "zaptrix_meta_inbound_statuses_total", "Status updates normalized from webhooks", ["status"]
)
IGNORED_CHANGES = Counter(
    "zaptrix_meta_ignored_changes_total", "Webhook changes of fields other than messages", ["field"]
)
WEBHOOK_SYSTEM_ERRORS = Counter(
    "zaptrix_meta_webhook_errors_total", "value.errors[] items (not tied to a message) by code", ["code"]
)
VERIFICATIONS = Counter("zaptrix_meta_verifications_total", "GET /webhooks/meta handshakes", ["outcome"])
MEDIA_PROXY = Counter(
    "zaptrix_meta_media_proxy_total",
    "Media proxy requests by outcome (ok, forbidden, expired, not_found, upstream_error, unavailable)",
    ["outcome"],
)
MEDIA_PROXY_BYTES = Counter("zaptrix_meta_media_proxy_bytes_total", "Bytes streamed by the media proxy")
CREDENTIALS_CACHE = Counter(
    "zaptrix_meta_credentials_cache_total",
    "Channel credential lookups by result (hit, miss, stale, negative, error)",
    ["result"],
)

# --- dispatcher ------------------------------------------------------------------------------------
SENDS = Counter(
    "zaptrix_meta_sends_total",
    "WhatsApp messages sent to the Graph API, by message type and outcome (ok or the Graph error code)",
    ["type", "outcome"],
)
SEND_FAILURES = Counter(
    "zaptrix_meta_send_failures_total",
    "Operator messages that could not be delivered, by Graph error code and what was done "
    "(notified, dead_lettered, retried)",
    ["code", "action"],
)
DEAD_LETTER_NOTICES = Counter(
    "zaptrix_meta_dead_letter_notices_total",
    "Dead-lettered operator events and their notice to the operator's chat: produced (a SendFailure), "
    "failed (could not be produced), none (no chat to tell: reads, deletes, unknown conversations)",
    ["event_type", "outcome"],
)
TOKEN_ERRORS = Counter(
    "zaptrix_meta_token_errors_total",
    "Graph API rejected a channel's access token (190/0): an administrator must renew it",
    ["phone_number_id"],
)
TEMPLATES = Counter(
    "zaptrix_meta_reengagement_templates_total",
    "Re-engagement templates after a closed 24-h window (sent, failed, cooldown)",
    ["outcome"],
)
PACING_WAIT = Histogram(
    "zaptrix_meta_pacing_wait_seconds",
    "Time a send waited for the throughput or the pair limiter",
    ["limiter"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
PAIR_DEFERRALS = Counter(
    "zaptrix_meta_pair_deferrals_total",
    "Sends moved to the retry topic to keep one message per pair interval per customer",
)
THROTTLED = Counter(
    "zaptrix_meta_throttled_total", "Throughput or pair-rate errors returned by the Graph API", ["code"]
)
AMBIGUOUS_RETRIES = Counter(
    "zaptrix_meta_ambiguous_retries_total",
    "Sends retried after the request may have reached Meta (read timeout): a duplicate is possible",
)
OPERATOR_EVENTS = Counter(
    "zaptrix_meta_operator_events_total",
    "Events other than operator messages (edits, deletes, reads, removed lines, closed windows), by type and "
    "outcome",
    ["type", "outcome"],
)
DUPLICATES = Counter(
    "zaptrix_meta_duplicate_events_total", "Redelivered events whose effect had already happened", ["type"]
)
