"""Fault injection of the stand-ins (POST /_sandbox/faults) and the compact record the fault suite counts
from (GET /_sandbox/faults/record?marker=...). See docs/faults.md.

A fault is a schedule of phases that starts when it is posted, e.g.
`{"phases": [{"mode": "5xx", "duration_s": 30}, {"mode": "timeout", "duration_s": 30}], "hang_s": 70}`.
Modes: Bitrix24 stand-in (REST only; OAuth keeps working) "5xx" answers 500 at once and does nothing,
"timeout" holds the request `hang_s` (past the caller's read timeout), then answers 504 and does nothing.
Graph stand-in "slow": the send is done and recorded and its status webhooks go out, but the answer comes
`delay_s` late (an ambiguous outcome for a caller that gives up earlier).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sanic import Request
from sanic.response import HTTPResponse
from sanic.response import json as json_response

from .web import App

Mode = Literal["none", "5xx", "timeout", "slow"]


class Phase(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Mode
    duration_s: float = Field(gt=0, le=3600)


class FaultSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    phases: list[Phase] = []
    hang_s: float = Field(70.0, ge=0, le=600)  # "timeout": how long a request is held before the 504
    delay_s: float = Field(12.0, ge=0, le=600)  # "slow": how late the answer comes


@dataclass
class Faults:
    """The current schedule and what it did (requests hit per mode)."""

    allowed: frozenset[str]
    spec: FaultSpec = field(default_factory=FaultSpec)
    started_at: float = 0.0
    hits: dict[str, int] = field(default_factory=dict)

    def mode(self, now: float | None = None) -> str:
        t = (now if now is not None else time.time()) - self.started_at
        for phase in self.spec.phases:
            if t < phase.duration_s:
                return phase.mode
            t -= phase.duration_s
        return "none"

    def reset(self) -> None:
        self.spec, self.started_at, self.hits = FaultSpec(), 0.0, {}

    def hit(self, mode: str) -> None:
        self.hits[mode] = self.hits.get(mode, 0) + 1

    def view(self) -> dict[str, Any]:
        total = sum(p.duration_s for p in self.spec.phases)
        return {
            **self.spec.model_dump(),
            "started_at": self.started_at,
            "ends_at": self.started_at + total if self.spec.phases else None,
            "mode_now": self.mode(),
            "hits": self.hits,
        }


def register(app: App, faults: Faults) -> None:
    @app.get("/_sandbox/faults")
    async def get_faults(request: Request) -> HTTPResponse:
        return json_response(faults.view())

    @app.post("/_sandbox/faults")
    async def set_faults(request: Request) -> HTTPResponse:
        try:
            spec = FaultSpec.model_validate(request.json or {})
        except ValidationError as exc:
            return json_response(
                {"error": "invalid request", "details": exc.errors(include_url=False)}, status=400
            )
        wrong = sorted({p.mode for p in spec.phases} - faults.allowed - {"none"})
        if wrong:
            return json_response({"error": f"this stand-in has no fault mode {', '.join(wrong)}"}, status=400)
        faults.spec, faults.started_at, faults.hits = spec, time.time(), {}
        return json_response(faults.view())
