"""The result of one scenario: what was measured, the target, the figure, pass/short, the baseline."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Result:
    scenario: str
    measured: str  # one line: what the figure is
    target: str  # the target, in words
    figure: str = "-"  # the headline number(s)
    verdict: str = "error"  # pass | short | error
    baseline: str = "-"  # same-run baseline and ratio, where meaningful
    details: dict[str, Any] = field(default_factory=dict)
    processes: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    duration_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.scenario}.json"
        path.write_text(json.dumps(self.to_json(), indent=2, default=str) + "\n")
        return path


def verdict(ok: bool) -> str:
    return "pass" if ok else "short"


RSS_GOAL_MIB = 150.0  # issue 14: memory per process under load
# The processes that goal is about are the services; the stand-ins, Kafka, PostgreSQL and the load
# generators are reported beside them, not judged.
NOT_OURS = ("sandbox-", "kafka", "postgresql", "bench harness", "wrk", "bare-sanic", "bare sanic", "py-spy")


def is_ours(process: str) -> bool:
    return not process.lower().startswith(NOT_OURS)


def memory(processes: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The highest max RSS (MiB) of a scenario's own processes against the goal, or None without any."""
    ours = [p for p in processes if is_ours(str(p.get("process"))) and p.get("rss_mb_max")]
    if not ours:
        return None
    top = max(ours, key=lambda p: float(p["rss_mb_max"]))
    return {
        "goal_mib": RSS_GOAL_MIB,
        "max_mib": float(top["rss_mb_max"]),
        "process": top["process"],
        "within_goal": all(float(p["rss_mb_max"]) < RSS_GOAL_MIB for p in ours),
        "max_mib_by_process": {str(p["process"]): float(p["rss_mb_max"]) for p in ours},
    }


def memory_cell(mem: dict[str, Any] | None) -> str:
    if not mem:
        return "-"
    return f"{mem['max_mib']:.0f} MiB {mem['process']} ({'<' if mem['within_goal'] else '≥'} {mem['goal_mib']:g})"
