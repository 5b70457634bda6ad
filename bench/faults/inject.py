"""The faults themselves: SIGKILL and restart, SIGSTOP and SIGCONT of our processes (through
dev/localsystem.py, which started them) and of the suite's own PostgreSQL and Kafka (through dev/stack),
and the stand-ins' fault schedules. Each returns when the system is back (process ready, stack up, fault
schedule over) and says when the fault began and when it ended."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import ROOT, LocalSystem, children_of, remember_pid


@dataclass
class Injected:
    fault_at: float
    recovered_at: float
    crashes: list[tuple[str, float]] = field(default_factory=list)  # (process, killed at)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Stack:
    """The suite's own PostgreSQL and Kafka (dev/faults.sh): where their pid files are."""

    state: Path

    @classmethod
    def from_environ(cls) -> Stack | None:
        state = os.environ.get("FAULTS_STACK_STATE")
        return cls(Path(state)) if state else None

    def postgres_pids(self) -> list[int]:
        pg = self.state / "pg"
        pidfile = (pg.resolve() if pg.is_symlink() else pg) / "data" / "postmaster.pid"
        pid = int(pidfile.read_text().split()[0])
        return [pid, *children_of(pid)]

    def kafka_pid(self) -> int:
        return int((self.state / "kafka" / "kafka.pid").read_text().strip())

    async def script(self, name: str, action: str) -> None:
        """Runs dev/stack/<name> <action>. Its output goes to a file, never a pipe: the broker it starts
        inherits the script's descriptors and lives on, so a pipe would never see its end."""
        log = self.state / f"faults-{name}-{action}.log"
        with log.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                str(ROOT / "dev" / "stack" / name), action, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
            )
            rc = await proc.wait()
        if rc != 0:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"dev/stack/{name} {action} failed (rc {rc}):\n{tail}")

    async def ensure_up(self) -> None:
        """Both started (a no-op when they run): a failed restart must not wreck the next scenarios."""
        await self.script("postgres.sh", "start")
        await self.script("kafka.sh", "start")


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _wait_gone(pid: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:  # noqa: ASYNC110 (another process: no event to await)
        await asyncio.sleep(0.1)


async def kill_and_restart(local: LocalSystem, name: str, restart_delay_s: float = 1.0) -> Injected:
    """SIGKILL the process (its whole group), then start it again as `make run` does and wait until it is
    ready (what a kubelet restart does, minus the back-off)."""
    proc = local.processes[name]
    assert proc.proc is not None
    fault_at = time.time()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.proc.pid, signal.SIGKILL)
    await proc.proc.wait()
    if proc.pump is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.pump, 5)
    local.processes.pop(name, None)
    await asyncio.sleep(restart_delay_s)
    definition = next(d for d in local.definitions() if d.name == name)
    await local.start_process(definition, ready_timeout_s=180)
    started = local.processes[name].proc
    assert started is not None
    remember_pid(started.pid)
    return Injected(fault_at, time.time(), crashes=[(name, fault_at)])


async def freeze(local: LocalSystem, name: str, seconds: float) -> Injected:
    """SIGSTOP the process group for `seconds` (a hang: sockets stay open, nothing answers), then SIGCONT."""
    proc = local.processes[name]
    assert proc.proc is not None
    fault_at = time.time()
    os.killpg(proc.proc.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(seconds)
    finally:
        os.killpg(proc.proc.pid, signal.SIGCONT)
    return Injected(fault_at, time.time())


async def kill_postgres(stack: Stack) -> Injected:
    pids = stack.postgres_pids()
    fault_at = time.time()
    _signal(pids, signal.SIGKILL)
    # Until every process is gone and reaped: pg_ctl takes a postmaster.pid whose process still exists
    # (a zombie too) for a running server, and `start` would do nothing.
    for pid in pids:
        await _wait_gone(pid, 60.0)
    await asyncio.sleep(1.0)
    await stack.script("postgres.sh", "start")  # crash recovery, then ready
    if stack.postgres_pids()[0] == pids[0]:
        raise RuntimeError(
            "PostgreSQL was not restarted (the killed postmaster's pid is still in postmaster.pid)"
        )
    return Injected(fault_at, time.time(), notes=[f"killed {len(pids)} PostgreSQL processes"])


async def freeze_postgres(stack: Stack, seconds: float) -> Injected:
    pids = stack.postgres_pids()  # postmaster first: it can start no new backend while stopped
    fault_at = time.time()
    _signal(pids, signal.SIGSTOP)
    try:
        await asyncio.sleep(seconds)
    finally:
        _signal(list(reversed(pids)), signal.SIGCONT)
    return Injected(fault_at, time.time(), notes=[f"stopped {len(pids)} PostgreSQL processes"])


async def kill_kafka(stack: Stack) -> Injected:
    pid = stack.kafka_pid()
    fault_at = time.time()
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    await _wait_gone(pid)
    await asyncio.sleep(1.0)
    await stack.script("kafka.sh", "start")
    return Injected(fault_at, time.time())


async def stand_in_fault(client: httpx.AsyncClient, spec: dict[str, Any]) -> Injected:
    """Posts a fault schedule to a stand-in and waits until it is over (held requests may still be held)."""
    resp = await client.post("/_sandbox/faults", json=spec, timeout=30)
    resp.raise_for_status()
    view = resp.json()
    await asyncio.sleep(max(0.0, float(view["ends_at"]) - time.time()))
    hits = (await client.get("/_sandbox/faults", timeout=30)).json().get("hits", {})
    return Injected(float(view["started_at"]), float(view["ends_at"]), notes=[f"stand-in fault hits: {hits}"])


async def expire_tokens(bitrix: httpx.AsyncClient, member_ids: list[str]) -> Injected:
    """Every access token of the portals expires now (refresh tokens stay valid): the gateway must refresh
    on `expired_token` and send again."""
    fault_at = time.time()
    expired = {}
    for member in member_ids:
        resp = await bitrix.post(f"/_sandbox/portals/{member}/expire-token", timeout=30)
        resp.raise_for_status()
        expired[member] = resp.json()["expired"]
    return Injected(fault_at, time.time(), notes=[f"access tokens expired: {expired}"])
