"""Counting one scenario from what the stand-ins recorded (pure functions: no I/O, unit-tested).

Every message the load generator sends carries an identity in its text, `<marker>-c000123` for a customer
message and `<marker>-o000045` for an operator reply; `<marker>` is the scenario's own. The Bitrix24
stand-in stores each customer message that reached an Open Lines chat, the Graph stand-in each send it
accepted, so per identity we know how often it arrived and when. See docs/faults.md.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

# The documented windows a duplicate can be attributed to. Only the unavoidable ones count as explained:
# neither Bitrix24's imconnector.send.messages nor the Graph API's send takes an idempotency key, so a
# process killed after the remote answer and before the delivery record resends once it restarts.
CRASH_BITRIX = "bitrix-dispatcher killed between the imconnector.send.messages answer and the delivery record"
CRASH_META = "meta-dispatcher killed between the Graph API answer and the delivery record"
# Avoidable (docs/ARCHITECTURE.md, "Delivery": ambiguous outcomes are reconciled before anything is resent;
# the fact that an effect happened survives the process and the replica): attributed, never explained.
GRAPH_AMBIGUOUS = "Graph API answered after our timeout (send done): resent without reconciling"
UNAVOIDABLE = frozenset({CRASH_BITRIX, CRASH_META})


@dataclass(frozen=True)
class Crash:
    """A process killed at `at` (epoch seconds)."""

    process: str
    at: float


@dataclass
class CustomerSent:
    ident: str
    at: float
    first_status: int | None = None  # meta-ingress's answer to the stand-in's first webhook attempt
    error: str | None = None


@dataclass
class OperatorSent:
    ident: str
    at: float
    member_id: str
    chat_id: str
    gateway_status: int | None = None  # bitrix-ingress's answer to the event; Bitrix24 never resends
    error: str | None = None


@dataclass
class FlowCount:
    sent: int = 0
    delivered: int = 0
    lost: int = 0
    lost_detail: dict[str, int] = field(default_factory=dict)
    lost_visible: int = 0
    lost_ids: list[str] = field(default_factory=list)
    lost_answers: dict[str, int] = field(default_factory=dict)  # what the gateway answered to the lost ones
    duplicated: int = 0
    explained_duplicates: int = 0
    windows: dict[str, int] = field(default_factory=dict)  # duplicates per attributed window
    duplicate_ids: list[str] = field(default_factory=list)
    drain_s: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "delivered": self.delivered,
            "lost": self.lost,
            "lost_detail": self.lost_detail,
            "lost_visible": self.lost_visible,
            "lost_ids": self.lost_ids[:50],
            "lost_answers": self.lost_answers,
            "duplicated": self.duplicated,
            "explained_duplicates": self.explained_duplicates,
            "windows": self.windows,
            "duplicate_ids": self.duplicate_ids[:50],
            "drain_s": self.drain_s,
        }


def ident_re(marker: str) -> re.Pattern[str]:
    return re.compile(re.escape(marker) + r"-[co]\d{6}")


def _attribute(first_at: float, crashes: list[Crash], process: str, window_s: float, name: str) -> str | None:
    for c in crashes:
        if c.process == process and c.at - window_s <= first_at <= c.at:
            return name
    return None


def _drain(first_arrivals: dict[str, float], sent_at: dict[str, float], recovered_at: float) -> float | None:
    """Seconds after recovery until everything sent before it had arrived (0 when it all had already)."""
    waits = [
        first_arrivals[i] - recovered_at
        for i, at in sent_at.items()
        if at < recovered_at and i in first_arrivals
    ]
    return round(max(0.0, *waits), 1) if waits else None


def count_customers(
    sent: list[CustomerSent],
    bitrix_marked: list[dict[str, Any]],
    webhooks: list[dict[str, Any]],
    notices: list[dict[str, Any]],
    marker: str,
    crashes: list[Crash],
    recovered_at: float,
    crash_window_s: float,
) -> FlowCount:
    """WhatsApp → Bitrix24: arrivals are the client messages in Open Lines chats."""
    pattern = ident_re(marker)
    arrivals: dict[str, list[float]] = defaultdict(list)
    for m in bitrix_marked:
        if m.get("direction") != "client":
            continue
        for ident in set(pattern.findall(str(m.get("text", "")))):
            arrivals[ident].append(float(m["received_at"]))
    accepted: dict[str, bool] = {}
    for w in webhooks:
        for ident in set(pattern.findall(str(w.get("body", "")))):
            accepted[ident] = accepted.get(ident, False) or w.get("accepted_at") is not None
    noticed = {i for n in notices for i in pattern.findall(str(n.get("text", "")))}
    out = FlowCount(sent=len(sent))
    for s in sent:
        times = sorted(arrivals.get(s.ident, []))
        if not times:
            out.lost += 1
            out.lost_ids.append(s.ident)
            why = (
                "webhook never answered 200 (Meta keeps retrying)"
                if not accepted.get(s.ident)
                else "taken, never delivered"
            )
            out.lost_detail[why] = out.lost_detail.get(why, 0) + 1
            out.lost_visible += s.ident in noticed
            continue
        out.delivered += 1
        extra = len(times) - 1
        if extra:
            out.duplicated += extra
            out.duplicate_ids.append(s.ident)
            window = _attribute(times[0], crashes, "bitrix-dispatcher", crash_window_s, CRASH_BITRIX)
            key = window or "unexplained"
            out.windows[key] = out.windows.get(key, 0) + extra
            if window in UNAVOIDABLE:
                out.explained_duplicates += extra
    firsts = {i: min(t) for i, t in arrivals.items()}
    out.drain_s = _drain(firsts, {s.ident: s.at for s in sent}, recovered_at)
    return out


def count_operators(
    sent: list[OperatorSent],
    graph_sends: list[dict[str, Any]],
    bitrix_marked: list[dict[str, Any]],
    notices: list[dict[str, Any]],
    marker: str,
    crashes: list[Crash],
    recovered_at: float,
    crash_window_s: float,
) -> FlowCount:
    """Bitrix24 → WhatsApp: arrivals are the sends the Graph stand-in accepted (HTTP 200)."""
    pattern = ident_re(marker)
    arrivals: dict[str, list[tuple[float, float]]] = defaultdict(list)  # ident -> (at, answer delay)
    for g in graph_sends:
        if g.get("http_status") != 200:
            continue
        for ident in set(pattern.findall(str(g.get("text", "")))):
            arrivals[ident].append((float(g["at"]), float(g.get("answer_delay_s") or 0.0)))
    marked_delivered: dict[str, bool] = {}
    chat_of: dict[str, tuple[str, str, float]] = {}
    for m in bitrix_marked:
        if m.get("direction") != "operator":
            continue
        for ident in set(pattern.findall(str(m.get("text", "")))):
            marked_delivered[ident] = bool(m.get("delivered"))
            chat_of[ident] = (str(m.get("member_id")), str(m.get("chat_id")), float(m.get("received_at", 0)))
    out = FlowCount(sent=len(sent))
    for s in sent:
        copies = sorted(arrivals.get(s.ident, []))
        if not copies:
            out.lost += 1
            out.lost_ids.append(s.ident)
            why = (
                "event refused or unanswered (Bitrix24 never resends)"
                if s.gateway_status != 200
                else "event taken, never sent"
            )
            out.lost_detail[why] = out.lost_detail.get(why, 0) + 1
            answer = str(s.gateway_status) if s.gateway_status is not None else (s.error or "no answer")[:80]
            out.lost_answers[answer] = out.lost_answers.get(answer, 0) + 1
            # Visible: the message shows no delivery mark, or a notice followed it in its chat.
            member, chat, at = chat_of.get(s.ident, (s.member_id, s.chat_id, s.at))
            notice = any(
                str(n.get("member_id")) == member
                and str(n.get("chat_id")) == chat
                and float(n.get("received_at", 0)) >= at
                and n.get("direction") != "operator"
                for n in notices
            )
            out.lost_visible += (not marked_delivered.get(s.ident, False)) or notice
            continue
        out.delivered += 1
        extra = len(copies) - 1
        if extra:
            out.duplicated += extra
            out.duplicate_ids.append(s.ident)
            first_at, first_delay = copies[0]
            window = _attribute(first_at, crashes, "meta-dispatcher", crash_window_s, CRASH_META)
            if window is None and first_delay > 0:
                window = GRAPH_AMBIGUOUS
            key = window or "unexplained"
            out.windows[key] = out.windows.get(key, 0) + extra
            if window in UNAVOIDABLE:
                out.explained_duplicates += extra
    firsts = {i: c[0][0] for i, c in arrivals.items()}
    out.drain_s = _drain(firsts, {s.ident: s.at for s in sent}, recovered_at)
    return out


def delivery_marks_missing(
    sent: list[OperatorSent],
    graph_sends: list[dict[str, Any]],
    bitrix_marked: list[dict[str, Any]],
    marker: str,
) -> int:
    """Operator replies the Graph stand-in accepted whose Bitrix24 message still has no delivery mark."""
    pattern = ident_re(marker)
    sent_ok = {
        i for g in graph_sends if g.get("http_status") == 200 for i in pattern.findall(str(g.get("text", "")))
    }
    marked = {
        i
        for m in bitrix_marked
        if m.get("direction") == "operator" and m.get("delivered")
        for i in pattern.findall(str(m.get("text", "")))
    }
    return sum(1 for s in sent if s.ident in sent_ok and s.ident not in marked)
