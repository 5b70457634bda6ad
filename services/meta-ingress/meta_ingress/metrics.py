"""meta-ingress's own Prometheus metrics (shared ones live in zaptrix.metrics)."""

from __future__ import annotations

from collections.abc import Collection

from prometheus_client import Counter, Gauge, Histogram

# --- fixed label sets: a label value from a webhook is one of these, else "other" ---------------------
OTHER = "other"
# Fields of a whatsapp_business_account webhook subscription (App Dashboard → WhatsApp → Configuration).
KNOWN_FIELDS = frozenset(
    {
        "account_alerts", "account_review_update", "account_update", "automatic_events",
        "business_capability_update", "business_status_update", "calls", "flows", "history",
        "message_echoes", "message_template_components_update", "message_template_quality_update",
        "message_template_status_update", "messages", "partner_solutions", "payment_configuration_update",
        "phone_number_name_update", "phone_number_quality_update", "security", "smb_app_state_sync",
        "smb_message_echoes", "template_category_update", "tracking_events", "user_preferences",
    }
)  # fmt: skip
KNOWN_TYPES = frozenset(
    {
        "text", "image", "video", "audio", "document", "sticker", "location", "contacts", "interactive",
        "button", "reaction", "order", "system", "request_welcome", "unsupported", "unknown",
    }
)  # fmt: skip
KNOWN_STATUSES = frozenset({"sent", "delivered", "read", "failed", "deleted", "warning", "played"})
KNOWN_ERROR_CODES = frozenset(
    {
        "0", "1", "3", "4", "10", "100", "190", "200", "368", "80007", "130429", "131000", "131008",
        "131016", "131026", "131031", "131042", "131047", "131048", "131049", "131050", "131051",
        "131052", "131056", "131057", "132000", "133016",
    }
)  # fmt: skip
PARK_REASONS = ("unknown_channel", "no_app_secret", "app_secret_mismatch")


def bounded(value: str, known: Collection[str]) -> str:
    """A label value from outside: itself when known, else "other" (label sets never grow with input)."""
    return value if value in known else OTHER


# --- web -------------------------------------------------------------------------------------------
WEBHOOKS = Counter(
    "zaptrix_meta_webhooks_total",
    "Meta webhook POSTs by outcome (ok, ignored, missing_signature, bad_signature, malformed, "
    "too_large, unknown_channel, dependency_unavailable, kafka_unavailable)",
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
INBOUND_BY_NUMBER = Counter(
    "zaptrix_meta_inbound_by_number_total",
    "Customer messages taken from webhooks, by the business phone number (phone_number_id) that received them "
    "(known channels only: unknown numbers are parked, so the label set is the installation's numbers)",
    ["phone_number_id"],
)
INBOUND_STATUSES = Counter(
    "zaptrix_meta_inbound_statuses_total", "Status updates normalized from webhooks", ["status"]
)
IGNORED_CHANGES = Counter(
    "zaptrix_meta_ignored_changes_total",
    "Changes of fields other than messages in authenticated webhooks (known field names, else other)",
    ["field"],
)
PARKED = Counter(
    "zaptrix_meta_webhook_parked_total",
    "Events of an authenticated webhook for a number that cannot take them, put in the dead-letter topic "
    "(unknown_channel, no_app_secret, app_secret_mismatch)",
    ["reason"],
)
TRUNCATED = Counter(
    "zaptrix_meta_events_truncated_total",
    "Events cut to fit one Kafka record (ZAPTRIX_WEBHOOK_EVENT_MAX_BYTES), by event type",
    ["type"],
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
    "Re-engagement templates after a closed 24-h window (sent, failed, cooldown, opted_out)",
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
AMBIGUOUS_SENDS = Counter(
    "zaptrix_meta_ambiguous_sends_total",
    "Sends whose outcome was unknown (timeout after the request left), by how it was resolved: confirmed "
    "(a status webhook echoed its id: not sent again) or resent (no echo within the reconcile window)",
    ["resolution"],
)
SEND_CONFIRMATIONS = Counter(
    "zaptrix_meta_send_confirmations_total",
    "Status webhooks echoing one of our part ids, recorded for the reconciliation of ambiguous sends: "
    "recorded, failed (mapper unavailable; a later status of the message tries again) or dropped (too many "
    "in flight)",
    ["outcome"],
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
FILE_FETCHES = Counter(
    "zaptrix_meta_file_fetches_total",
    "Bitrix24 file downloads by outcome (ok, refused, too_large, too_slow, http_4xx, web_page, retried)",
    ["outcome"],
)
FILE_SPOOL_BYTES = Gauge(
    "zaptrix_meta_file_spool_bytes", "Spool budget reserved by downloads and uploads in progress"
)

# --- template catalogue and template sends (issue 16) ---
TEMPLATE_SENDS = Counter(
    "zaptrix_meta_template_sends_total",
    "Operator template sends (/template command or picker) by outcome: sent, invalid (refused before sending), "
    "opted_out, refused (Graph error), duplicate",
    ["outcome"],
)
TEMPLATE_UPDATES = Counter(
    "zaptrix_meta_template_updates_total",
    "Template webhooks and syncs applied to the catalogue, by kind (status, quality, category, sync) and "
    "outcome (applied, stale, unknown_template, synced, failed)",
    ["kind", "outcome"],
)
