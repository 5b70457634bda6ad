"""One fault scenario: steady load on both flows, the fault injected during it, the drain, the count."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.common import LocalSystem, remember_pid
from bench.faults import inject
from bench.faults.count import (
    Crash,
    FlowCount,
    count_customers,
    count_operators,
    delivery_marks_missing,
    ident_re,
)
from bench.faults.load import Customer, Load, run_load


@dataclass(frozen=True)
class Config:
    messages: int = 800  # customer messages per scenario
    replies: int = 160  # operator replies per scenario
    pre_s: float = 10.0  # steady load before the fault
    post_s: float = 20.0  # load after the fault's expected end
    stop_s: float = 20.0  # SIGSTOP length
    outage_s: float = 60.0  # stand-in fault length
    graph_delay_s: float = 12.0  # "slow" Graph answers: past meta-dispatcher's 10 s read timeout
    bitrix_hang_s: float = 70.0  # "timeout" Bitrix24 requests: past bitrix-dispatcher's 65 s read timeout
    restart_delay_s: float = 1.0
    crash_window_s: float = 10.0  # a duplicate whose first copy arrived this long before a kill is the kill's
    drain_timeout_s: float = 240.0
    settle_s: float = 10.0  # after everything arrived, late duplicates still count


@dataclass
class Context:
    local: LocalSystem
    graph: httpx.AsyncClient
    bitrix: httpx.AsyncClient
    customers: list[Customer]
    members: list[str]
    stack: inject.Stack | None = None


Injector = Callable[[Context, Config], Awaitable[inject.Injected]]


@dataclass(frozen=True)
class Scenario:
    id: str
    component: str
    fault: str
    inject: Injector
    fault_s: Callable[[Config], float]  # how long the fault lasts (sizes the load)
    needs_stack: bool = False


def _kill(name: str) -> Injector:
    return lambda ctx, cfg: inject.kill_and_restart(ctx.local, name, cfg.restart_delay_s)


def _freeze(name: str) -> Injector:
    return lambda ctx, cfg: inject.freeze(ctx.local, name, cfg.stop_s)


def _stack(ctx: Context) -> inject.Stack:
    if ctx.stack is None:
        raise RuntimeError("needs the suite's own PostgreSQL and Kafka: run it through `make faults`")
    return ctx.stack


def _bitrix_outage(ctx: Context, cfg: Config) -> Awaitable[inject.Injected]:
    half = cfg.outage_s / 2
    spec = {
        "phases": [{"mode": "5xx", "duration_s": half}, {"mode": "timeout", "duration_s": half}],
        "hang_s": cfg.bitrix_hang_s,
    }
    return inject.stand_in_fault(ctx.bitrix, spec)


def _graph_slow(ctx: Context, cfg: Config) -> Awaitable[inject.Injected]:
    spec = {"phases": [{"mode": "slow", "duration_s": cfg.outage_s}], "delay_s": cfg.graph_delay_s}
    return inject.stand_in_fault(ctx.graph, spec)


KILL_S = 8.0  # a restart's length, roughly: sizes the load only
SCENARIOS: list[Scenario] = [
    Scenario(
        "kafka-kill",
        "kafka",
        "SIGKILL + restart",
        lambda ctx, cfg: inject.kill_kafka(_stack(ctx)),
        lambda cfg: 20.0,
        True,
    ),
    Scenario(
        "postgres-kill",
        "postgresql",
        "SIGKILL + restart",
        lambda ctx, cfg: inject.kill_postgres(_stack(ctx)),
        lambda cfg: KILL_S,
        True,
    ),
    *[
        Scenario(f"{name}-kill", name, "SIGKILL + restart", _kill(name), lambda cfg: KILL_S)
        for name in (
            "mapper",
            "token-keeper",
            "meta-ingress",
            "bitrix-ingress",
            "meta-dispatcher",
            "bitrix-dispatcher",
        )
    ],
    Scenario(
        "postgres-stop",
        "postgresql",
        "SIGSTOP (hang)",
        lambda ctx, cfg: inject.freeze_postgres(_stack(ctx), cfg.stop_s),
        lambda cfg: cfg.stop_s,
        True,
    ),
    Scenario("mapper-stop", "mapper", "SIGSTOP (hang)", _freeze("mapper"), lambda cfg: cfg.stop_s),
    Scenario(
        "bitrix-5xx-timeout",
        "bitrix24 stand-in",
        "5xx, then requests held past the read timeout",
        _bitrix_outage,
        lambda cfg: cfg.outage_s,
    ),
    Scenario(
        "graph-slow",
        "graph stand-in",
        "answers past our timeout, send done (ambiguous)",
        _graph_slow,
        lambda cfg: cfg.outage_s,
    ),
    Scenario(
        "token-expired",
        "bitrix24 stand-in",
        "every access token expired mid-run",
        lambda ctx, cfg: inject.expire_tokens(ctx.bitrix, ctx.members),
        lambda cfg: 0.0,
    ),
]
BY_ID = {s.id: s for s in SCENARIOS}


@dataclass
class Outcome:
    scenario: Scenario
    marker: str
    customers: FlowCount
    operators: FlowCount
    injected: inject.Injected | None
    load: Load
    marks_missing: int = 0
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    duration_s: float = 0.0

    def row(self) -> dict[str, Any]:
        c, o = self.customers, self.operators
        unexplained = (c.duplicated - c.explained_duplicates) + (o.duplicated - o.explained_duplicates)
        drains = [d for d in (c.drain_s, o.drain_s) if d is not None]
        inj = self.injected
        return {
            "id": self.scenario.id,
            "component": self.scenario.component,
            "fault": self.scenario.fault,
            "sent": c.sent + o.sent,
            "delivered": c.delivered + o.delivered,
            "lost": c.lost + o.lost,
            "duplicated": c.duplicated + o.duplicated,
            "explained_duplicates": c.explained_duplicates + o.explained_duplicates,
            "unexplained_duplicates": unexplained,
            "drain_s": max(drains) if drains else None,
            "lost_visible_to_operator": c.lost_visible + o.lost_visible,
            "delivery_marks_missing": self.marks_missing,
            "customer_messages": c.as_json(),
            "operator_replies": o.as_json(),
            "marker": self.marker,
            "fault_at": inj.fault_at if inj else None,
            "recovered_at": inj.recovered_at if inj else None,
            "fault_length_s": round(inj.recovered_at - inj.fault_at, 1) if inj else None,
            "webhook_first_attempt_not_200": sum(1 for s in self.load.customers if s.first_status != 200),
            "operator_events_not_200": sum(1 for s in self.load.operators if s.gateway_status != 200),
            "notes": self.notes + (inj.notes if inj else []),
            "error": self.error,
            "duration_s": round(self.duration_s, 1),
        }


async def _records(ctx: Context, marker: str, since: float) -> dict[str, Any]:
    b = await ctx.bitrix.get(
        "/_sandbox/faults/record", params={"marker": marker, "since": since}, timeout=120
    )
    g = await ctx.graph.get("/_sandbox/faults/record", params={"marker": marker}, timeout=120)
    b.raise_for_status()
    g.raise_for_status()
    return {"bitrix": b.json(), "graph": g.json()}


def _complete(load: Load, records: dict[str, Any], marker: str) -> bool:
    pattern = ident_re(marker)
    arrived = {
        i
        for m in records["bitrix"]["marked"]
        if m["direction"] == "client"
        for i in pattern.findall(m["text"])
    }
    sent = {
        i for g in records["graph"]["sends"] if g["http_status"] == 200 for i in pattern.findall(g["text"])
    }
    return all(s.ident in arrived for s in load.customers) and all(
        s.ident in sent for s in load.operators if s.gateway_status == 200
    )


async def ensure_running(ctx: Context) -> list[str]:
    """Restarts any of our processes that exited on its own (and says so): the next scenario starts whole."""
    notes = []
    if ctx.stack is not None:
        await ctx.stack.ensure_up()
    for definition in ctx.local.definitions():
        proc = ctx.local.processes.get(definition.name)
        if proc is not None and proc.proc is not None and proc.proc.returncode is None:
            continue
        rc = proc.proc.returncode if proc is not None and proc.proc is not None else None
        notes.append(f"{definition.name} had exited (rc {rc}): restarted")
        ctx.local.processes.pop(definition.name, None)
        await ctx.local.start_process(definition, ready_timeout_s=180)
        started = ctx.local.processes[definition.name].proc
        assert started is not None
        remember_pid(started.pid)
    return notes


async def run_scenario(ctx: Context, scenario: Scenario, cfg: Config, marker: str) -> Outcome:
    started = time.time()
    fault_s = scenario.fault_s(cfg)
    load_s = cfg.pre_s + fault_s + cfg.post_s
    injected: inject.Injected | None = None
    error: str | None = None

    async def fault() -> inject.Injected:
        await asyncio.sleep(cfg.pre_s)
        return await scenario.inject(ctx, cfg)

    load_task = asyncio.create_task(
        run_load(ctx.graph, ctx.bitrix, ctx.customers, marker, cfg.messages, cfg.replies, load_s)
    )
    fault_task = asyncio.create_task(fault())
    try:
        injected = await fault_task
    except Exception as exc:  # a fault that could not be injected or recovered is reported, not hidden
        error = f"fault: {type(exc).__name__}: {exc}"[:2000]
    load = await load_task
    deadline = time.monotonic() + cfg.drain_timeout_s
    records = await _records(ctx, marker, started)
    while not _complete(load, records, marker) and time.monotonic() < deadline:
        await asyncio.sleep(2.0)
        records = await _records(ctx, marker, started)
    await asyncio.sleep(cfg.settle_s)
    records = await _records(ctx, marker, started)
    recovered_at = injected.recovered_at if injected else time.time()
    crashes = [Crash(p, at) for p, at in (injected.crashes if injected else [])]
    notices = records["bitrix"]["other"]
    customers = count_customers(
        load.customers,
        records["bitrix"]["marked"],
        records["graph"]["webhooks"],
        notices,
        marker,
        crashes,
        recovered_at,
        cfg.crash_window_s,
    )
    operators = count_operators(
        load.operators,
        records["graph"]["sends"],
        records["bitrix"]["marked"],
        notices,
        marker,
        crashes,
        recovered_at,
        cfg.crash_window_s,
    )
    outcome = Outcome(scenario, marker, customers, operators, injected, load, error=error)
    outcome.marks_missing = delivery_marks_missing(
        load.operators, records["graph"]["sends"], records["bitrix"]["marked"], marker
    )
    try:
        outcome.notes += await ensure_running(ctx)
    except Exception as exc:
        outcome.notes.append(f"could not restart an exited process: {type(exc).__name__}: {exc}"[:500])
    outcome.duration_s = time.time() - started
    return outcome
