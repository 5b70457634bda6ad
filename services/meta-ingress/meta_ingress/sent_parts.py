"""The id a send carries through Meta and back: ``biz_opaque_callback_data``.

Every POST /messages carries our part id (``b24:<member_id>:<message id>[#p<n>]``, or the re-engagement
template's key) as ``biz_opaque_callback_data``; Meta echoes it in the sent, delivered and read status
webhooks (docs/reconciliation.md). Any app subscribed to the number's WABA can read it: it is our id only,
never text or a phone number. When a send's outcome was ambiguous (a timeout after the request left), the
web process records the echo as the mapper dedupe record ``sent:<phone_number_id>:<part id>`` → wamid, and
the dispatcher's retry finds it there instead of sending again. The phone number id in the record's key is
the authenticated one of the status webhook (signed with that channel's app secret), so a status from one
tenant's number can never confirm another tenant's send.
"""

from __future__ import annotations

OPAQUE_MAX_CHARS = 512  # Meta's limit for biz_opaque_callback_data
RECORD_ID_MAX_CHARS = 256  # the mapper's limit for an event id
SENT_PREFIX = "sent:"
CONFIRMING_STATUSES = frozenset({"sent", "delivered", "read"})  # "failed": never reached the customer


def opaque_of(part_id: str) -> str | None:
    """The biz_opaque_callback_data of a part: its id, or None when Meta would refuse it (too long)."""
    return part_id if 0 < len(part_id) <= OPAQUE_MAX_CHARS else None


def sent_record_id(phone_number_id: str, part_id: str) -> str | None:
    """The mapper dedupe record saying Meta took this part from this number (result: its wamid); None when
    the id would be too long for the mapper (never for our own part ids)."""
    record_id = f"{SENT_PREFIX}{phone_number_id}:{part_id}"
    return record_id if len(record_id) <= RECORD_ID_MAX_CHARS else None
