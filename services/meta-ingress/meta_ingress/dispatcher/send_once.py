"""Each part of an operator's message (and each re-engagement template) reaches the customer once, whichever
attempt, process or replica handles its event.

- The moment Graph answers, the wamid is noted on the record (``Received.happened``): if recording it then
  fails (mapper down), the retry record carries it (zaptrix.kafka.effects) and the next attempt, on any
  replica, records the part instead of sending it again.
- A send whose outcome is unknown (a timeout after the request left: Meta may have taken it) is not sent
  again at once. It is noted as ``ambiguous:<epoch s>`` and the event goes to the retry topic. Meta echoes
  the part id (biz_opaque_callback_data, sent_parts.py) in its status webhooks, and the web process records
  that echo; the retry finds it (``confirmed``: the part is recorded with that wamid) or waits again, and
  only after ``reconcile_window_s`` without an echo sends the part again (``resent``: a duplicate only if
  Meta had taken it and its status webhook was lost or is later than the window).
"""

from __future__ import annotations

import time
from typing import Any

from zaptrix.kafka import Received, TransientError
from zaptrix.logging import get_logger

from meta_ingress.dispatcher.records import Records
from meta_ingress.dispatcher.sender import Sender
from meta_ingress.graph.errors import GraphTransportError
from meta_ingress.metrics import AMBIGUOUS_SENDS
from meta_ingress.sent_parts import sent_record_id
from meta_ingress.settings import DispatcherSettings

log = get_logger(__name__)
AMBIGUOUS = "ambiguous:"
_FUTURE_SLACK_S = 60.0


def _noted_at(noted: str, now: float) -> float:
    """When an ambiguous send happened (epoch s); 0 for a value that is not a plausible time."""
    raw = noted.removeprefix(AMBIGUOUS)
    at = float(raw) if raw.isdigit() and len(raw) <= 12 else 0.0
    return at if at <= now + _FUTURE_SLACK_S else 0.0


class SendOnce:
    def __init__(self, settings: DispatcherSettings, records: Records, sender: Sender) -> None:
        self.settings = settings
        self.records = records
        self.sender = sender

    async def prior(self, rec: Received, part_id: str, phone_number_id: str, *, recorded: bool) -> str | None:
        """What earlier attempts did with this part: its result (a wamid, or "failed:<why>"), or None when it
        must be sent now. ``recorded``: also ask the mapper's dedupe record of the part. An ambiguous earlier
        send is reconciled: TransientError while its status webhook may still come."""
        noted = rec.effects.get(part_id)
        if noted is None and recorded:
            noted = await self.records.recorded(part_id)
        if noted is None or not noted.startswith(AMBIGUOUS):
            return noted
        return await self._reconcile(rec, part_id, phone_number_id, noted)

    async def send(
        self,
        rec: Received,
        phone_number_id: str,
        wa_id: str,
        part_id: str,
        token: str,
        payload: dict[str, Any],
    ) -> str:
        """Send the part and note it on the record; an ambiguous outcome is noted and raised as
        TransientError (retry topic), never sent again here."""
        try:
            wamid = await self.sender.send(phone_number_id, wa_id, part_id, token, payload)
        except GraphTransportError as exc:
            if not exc.maybe_delivered:
                raise
            rec.happened(part_id, f"{AMBIGUOUS}{int(time.time())}")
            raise TransientError(
                f"Graph API: outcome of {part_id} unknown ({exc}); waiting for its status webhook",
                self.settings.ambiguous_retry_s,
            ) from exc
        rec.happened(part_id, wamid)
        return wamid

    async def _reconcile(self, rec: Received, part_id: str, phone_number_id: str, noted: str) -> str | None:
        record_id = sent_record_id(phone_number_id, part_id)
        wamid = await self.records.recorded(record_id) if record_id is not None else None
        if wamid:
            AMBIGUOUS_SENDS.labels("confirmed").inc()
            log.info(
                "ambiguous send confirmed by its status webhook; not sent again", part_id=part_id, wamid=wamid
            )
            rec.happened(part_id, wamid)
            return wamid
        now = time.time()
        waited = max(0.0, now - _noted_at(noted, now))
        window = self.settings.reconcile_window_s
        if waited < window:
            # Looks again soon (a "sent" status normally comes within seconds), then less often: the retries
            # spent waiting stay few (about log2(window / ambiguous_retry_s)) against max_attempts.
            retry_after = min(window - waited, max(self.settings.ambiguous_retry_s, waited))
            raise TransientError(
                f"outcome of {part_id} unknown for {waited:.0f}s: waiting for its status webhook",
                max(1.0, retry_after),
            )
        AMBIGUOUS_SENDS.labels("resent").inc()
        log.warning(
            "no status webhook for an ambiguous send within the reconcile window: sending it again "
            "(a duplicate if Meta had taken it)",
            part_id=part_id,
            waited_s=round(waited),
        )
        return None
