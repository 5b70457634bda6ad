"""Prometheus metrics of bitrix-ingress (shared ones live in zaptrix.metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

EVENTS_RECEIVED = Counter(
    "zaptrix_bitrix_events_received_total",
    "Bitrix24 events received by outcome (accepted, ignored, unauthorized, refused, malformed, unavailable)",
    ["event", "outcome"],
)
EVENTS_LOST = Counter(
    "zaptrix_bitrix_events_lost_total",
    "Bitrix24 events answered 503 (Bitrix24 never resends them): logged in full at ERROR",
    ["event", "reason"],
)
ITEMS_SKIPPED = Counter(
    "zaptrix_bitrix_event_items_skipped_total",
    "Messages inside an event left out (malformed, or our own failure notice echoed back)",
    ["event"],
)
VERIFY_STALE = Counter(
    "zaptrix_bitrix_verify_stale_total",
    "Bitrix24 events taken on a last-known-good application-token verification because token-keeper was"
    " unavailable (ZAPTRIX_VERIFY_STALE_S)",
)
UNRESOLVED_CHATS = Counter(
    "zaptrix_bitrix_unresolved_chats_total",
    "Operator events keyed by their chat id because the mapper could not be asked (unknown and other portals'"
    " chats are refused: zaptrix_cross_tenant_refusals_total)",
    ["reason"],
)
OFFLINE_EVENTS = Counter(
    "zaptrix_bitrix_offline_events_total",
    "Offline-event records read back from Bitrix24 (event.offline.get), by outcome: produced (in Kafka, then "
    "confirmed), ignored (nothing to relay), malformed / refused (parked with event.offline.error), retried "
    "(left reserved for the next poll), lost (read with clear=1 and not produced)",
    ["outcome"],
)
OFFLINE_POLLS = Counter(
    "zaptrix_bitrix_offline_polls_total",
    "Offline-event polls by outcome: ok, failed (one portal's queue waits for the next poll), "
    "kafka_unavailable (no portal read: nothing is taken from a queue that cannot be produced)",
    ["outcome"],
)
INSTALLS = Counter("zaptrix_bitrix_installs_total", "Install/setup requests by outcome", ["kind", "outcome"])

MESSAGES_PER_CALL = Histogram(
    "zaptrix_bitrix_messages_per_call",
    "Messages carried by one imconnector.send.messages call",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200),
)
REQUESTS_PER_FLUSH = Histogram(
    "zaptrix_bitrix_requests_per_portal_flush",
    "HTTP requests that carried one poll batch's works for one portal (shared with the batches in flight)",
    buckets=(1, 2, 3, 5, 10, 20, 50),
)
DELIVERED = Counter(
    "zaptrix_bitrix_customer_messages_total", "Customer messages handled, by outcome", ["outcome"]
)
STATUSES = Counter(
    "zaptrix_bitrix_statuses_total", "WhatsApp statuses handled, by status and outcome", ["status", "outcome"]
)
NOTICES = Counter("zaptrix_bitrix_notices_total", "Failure notices posted to operators", ["source", "via"])
DEAD_LETTER_NOTICES = Counter(
    "zaptrix_bitrix_dead_letter_notices_total",
    "Dead-lettered wa-to-b24 events and the notice attempt: produced (a SendFailure for the chat), "
    "no_chat, failed (could not be produced), notice_lost (a notice itself was dead-lettered), delivered (sent to"
    " Bitrix24, only its recording failed: no notice), none",
    ["event_type", "outcome"],
)
CRM = Counter("zaptrix_bitrix_crm_contacts_total", "First-contact CRM lookups by outcome", ["outcome"])
BATCH_FALLBACKS = Counter(
    "zaptrix_bitrix_batch_fallbacks_total", "Portals where imconnector.* was refused inside batch"
)

# --- template picker (issue 16) ---
TEMPLATE_PICKER = Counter(
    "zaptrix_bitrix_template_picker_total",
    "Template picker requests by route (page, send) and outcome (shown, accepted, invalid, refused, malformed, "
    "unavailable)",
    ["route", "outcome"],
)
