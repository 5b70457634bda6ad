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
