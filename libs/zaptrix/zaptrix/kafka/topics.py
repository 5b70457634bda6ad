"""Topic names. Versioned so that an incompatible envelope can move to .v2 beside .v1."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Flow(StrEnum):
    WA_TO_B24 = "wa-to-b24"  # customer messages and Meta statuses, consumed by the bitrix dispatcher
    B24_TO_WA = "b24-to-wa"  # operator messages and reads, consumed by the meta dispatcher
    # Coexistence history import (thousands of old messages), consumed by the bitrix dispatcher's own
    # history consumer: a topic of its own so that it never delays live traffic.
    WA_HISTORY = "wa-history"


@dataclass(frozen=True)
class FlowTopics:
    main: str
    retry: str
    dlq: str

    def all(self) -> list[str]:
        return [self.main, self.retry, self.dlq]


def topics_for(flow: Flow, prefix: str = "zaptrix") -> FlowTopics:
    base = f"{prefix}.{flow.value}"
    return FlowTopics(main=f"{base}.v1", retry=f"{base}.retry.v1", dlq=f"{base}.dlq.v1")


def audit_topic(prefix: str = "zaptrix") -> str:
    """Admin actions (dead-letter replays, zaptrix.dead_letters): kept forever (retention.ms -1), keyed by
    portal. Not a flow: nothing consumes it but the admin surfaces that show the audit."""
    return f"{prefix}.admin-audit.v1"
