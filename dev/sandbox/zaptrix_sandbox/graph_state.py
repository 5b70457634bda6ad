"""In-memory state of the Graph API stand-in: customers, sends, reads, media, webhook deliveries."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from .graph_pricing import PricingBook
from .graph_settings import Channel, GraphOptions
from .ratelimit import TokenBucket


def new_wamid() -> str:
    return "wamid.HBgL" + secrets.token_urlsafe(24).replace("-", "A").replace("_", "B")


@dataclass
class Media:
    id: str
    phone_number_id: str
    data: bytes
    mime_type: str  # as reported (may carry parameters, e.g. "audio/ogg; codecs=opus")
    filename: str | None
    created_at: float = field(default_factory=time.time)

    @property
    def sha256_hex(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class Sent:
    """One call of POST /messages by the business, accepted or refused."""

    phone_number_id: str
    payload: Any
    http_status: int
    response: Any
    wamid: str | None = None
    to: str | None = None
    wa_id: str | None = None
    type: str | None = None
    outcome: str = "accepted"  # accepted | rejected | sent | delivered | read | failed
    error_code: int | None = None
    statuses: list[str] = field(default_factory=list)
    media: dict[str, Any] | None = None  # what the stand-in downloaded from a `link`
    at: float = field(default_factory=time.time)
    answer_delay_s: float = 0.0  # a "slow" fault held the answer this long after the send was done
    pricing: dict[str, Any] | None = None  # statuses[].pricing, decided at send (graph_pricing.py)

    def view(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Delivery:
    """One webhook body (fixed bytes and signature) and every attempt to deliver it."""

    id: str
    kind: str
    body: bytes
    signature: str
    headers: dict[str, str]
    attempts: list[dict[str, Any]] = field(default_factory=list)
    replay_of: str | None = None

    def view(self) -> dict[str, Any]:
        import json

        return {
            "id": self.id,
            "kind": self.kind,
            "replay_of": self.replay_of,
            "signature": self.signature,
            "payload": json.loads(self.body),
            "attempts": self.attempts,
            "final_status": self.attempts[-1]["status_code"] if self.attempts else None,
        }


class GraphState:
    def __init__(self, options: GraphOptions) -> None:
        self.options = options
        self.reset()

    def reset(self) -> None:
        self.last_inbound: dict[tuple[str, str], float | None] = {}
        self.inbound: dict[str, dict[str, Any]] = {}  # wamid -> {phone_number_id, wa_id, message}
        self.sent: list[Sent] = []
        self.sent_by_wamid: dict[str, Sent] = {}
        self.reads: list[dict[str, Any]] = []
        self.media: dict[str, Media] = {}
        self.deliveries: dict[str, Delivery] = {}
        self.expired_tokens: set[str] = set()
        # customers who stopped marketing messages (user_preferences "stop"): marketing templates fail 131050
        self.marketing_stopped: set[tuple[str, str]] = set()
        self._throughput: dict[str, TokenBucket] = {}
        self._pair: dict[tuple[str, str], TokenBucket] = {}
        self._seq = 0
        self.pricing = PricingBook()

    def reset_limits(self) -> None:
        self._throughput.clear()
        self._pair.clear()

    def next_id(self, prefix: str = "") -> str:
        self._seq += 1
        return f"{prefix}{self._seq}"

    def new_media_id(self) -> str:
        return str(1_000_000_000_000_000 + secrets.randbelow(10**15))

    # --- channels and limits -------------------------------------------------------------------
    def channel(self, phone_number_id: str) -> Channel | None:
        return next((c for c in self.options.channels if c.phone_number_id == phone_number_id), None)

    def throughput(self, phone_number_id: str) -> TokenBucket:
        mps = self.options.throughput_mps
        return self._throughput.setdefault(phone_number_id, TokenBucket(mps, mps))

    def pair(self, phone_number_id: str, wa_id: str) -> TokenBucket:
        o = self.options
        return self._pair.setdefault((phone_number_id, wa_id), TokenBucket(o.pair_rate_per_s, o.pair_burst))

    # --- 24-hour customer service window ----------------------------------------------------------
    def window_open(self, phone_number_id: str, wa_id: str) -> bool:
        if not self.options.window_enforced:
            return True
        last = self.last_inbound.get((phone_number_id, wa_id))
        return last is not None and time.time() - last < self.options.window_hours * 3600

    def record_sent(self, sent: Sent) -> Sent:
        self.sent.append(sent)
        if sent.wamid:
            self.sent_by_wamid[sent.wamid] = sent
        return sent
