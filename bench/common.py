"""Shared machinery of the benchmarks: the bench environment, systems under test, process accounting
(RSS and CPU from /proc), percentiles, Prometheus scraping and Kafka offsets.

Everything here talks only to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "dev"))
from localsystem import LocalSystem, Ports  # noqa: E402  (dev/ is not a package)
from zaptrix_testing.ports import free_port  # noqa: E402
from zaptrix_testing.seeding import (  # noqa: E402
    CONNECTOR_ID,
    SANDBOX_APP_SECRET,
    SANDBOX_DISPLAY_NUMBER,
    SANDBOX_LINE_ID,
    SANDBOX_MEMBER_ID,
    SANDBOX_PHONE_NUMBER_ID,
    SANDBOX_VERIFY_TOKEN,
    SANDBOX_WA_TOKEN,
    SANDBOX_WABA_ID,
    seed_sandbox_channel,
)

__all__ = [
    "CONNECTOR_ID",
    "SANDBOX_APP_SECRET",
    "SANDBOX_DISPLAY_NUMBER",
    "SANDBOX_LINE_ID",
    "SANDBOX_MEMBER_ID",
    "SANDBOX_PHONE_NUMBER_ID",
    "SANDBOX_VERIFY_TOKEN",
    "SANDBOX_WABA_ID",
    "SANDBOX_WA_TOKEN",
    "LocalSystem",
    "Ports",
    "free_port",
]
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- environment ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchEnv:
    """What dev/bench.sh hands over: the bench's own PostgreSQL and Kafka and its state folder."""

    pg_url: str  # superuser DSN of the bench cluster (a database per scenario is created in it)
    kafka: str  # bootstrap servers
    state: Path  # ZAPTRIX_STATE of the bench stack (pid files of PostgreSQL and Kafka live here)
    results: Path
    scale: float = 1.0  # BENCH_SCALE: multiplies durations (0.3 = a quick smoke run)

    @classmethod
    def from_environ(cls, need_stack: bool = True) -> BenchEnv:
        """``need_stack=False``: in-process scenarios only (adversarial), no PostgreSQL or Kafka needed."""
        missing = [n for n in ("BENCH_PG_URL", "BENCH_KAFKA") if not os.environ.get(n)]
        if missing and need_stack:
            raise SystemExit(
                f"{', '.join(missing)} not set: run the benchmarks through dev/bench.sh (or `make bench`), "
                "which starts the bench's own PostgreSQL and Kafka"
            )
        return cls(
            pg_url=os.environ.get("BENCH_PG_URL", ""),
            kafka=os.environ.get("BENCH_KAFKA", ""),
            state=Path(os.environ.get("BENCH_STATE", ROOT / ".local" / "bench")),
            results=Path(os.environ.get("BENCH_RESULTS", ROOT / "bench" / "results")),
            scale=float(os.environ.get("BENCH_SCALE", "1") or 1),
        )

    def seconds(self, s: float, minimum: float = 2.0) -> float:
        return max(minimum, s * self.scale)


# ---- child processes we start ourselves (wrk, bare Sanic): always reaped ------------------------------

_OWN_PIDS: dict[int, int | None] = {}  # pid -> its start time (clock ticks since boot)


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rpartition(")")[2].split()[19])  # field 22 of stat
    except (OSError, ValueError, IndexError):
        return None


def remember_pid(pid: int) -> None:
    _OWN_PIDS[pid] = _start_time(pid)


def forget_pid(pid: int) -> None:
    _OWN_PIDS.pop(pid, None)


def kill_remembered() -> None:
    """Last resort (exit, second Ctrl-C): SIGKILL every process group we started and did not stop. A pid
    whose start time changed belongs to someone else now (pids are reused quickly on a busy box): skipped."""
    for pid, started in list(_OWN_PIDS.items()):
        if started is not None and _start_time(pid) == started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        _OWN_PIDS.pop(pid, None)


async def stop_subprocess(proc: asyncio.subprocess.Process, grace_s: float = 5.0) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    forget_pid(proc.pid)


# ---- /proc accounting ----------------------------------------------------------------------------------


def _status_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_kb(pid: int) -> int | None:
    return _status_kb(pid, "VmRSS")


def cpu_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
        return int(fields[11]) + int(fields[12])  # utime + stime (fields 14 and 15 of stat)
    except (OSError, ValueError, IndexError):
        return None


def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            out.append(int(entry))
    return out


def _pid_from_file(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def stack_pids(env: BenchEnv) -> dict[str, list[int]]:
    """Kafka broker and PostgreSQL (postmaster plus its backends) of the bench stack."""
    out: dict[str, list[int]] = {}
    kafka = _pid_from_file(env.state / "kafka" / "kafka.pid")
    if kafka:
        out["kafka (JVM)"] = [kafka]
    pg_dir = env.state / "pg"
    with contextlib.suppress(OSError):
        pg_dir = pg_dir.resolve()
    master = _pid_from_file(pg_dir / "data" / "postmaster.pid")
    if master:
        out["postgresql (all backends)"] = [master]  # children are added at each sample
    return out


class ProcessMonitor:
    """Samples VmRSS (from /proc/<pid>/status) of every named process each `interval_s`, and CPU time,
    between start() and stop(). PostgreSQL is reported as the sum of the postmaster and its children
    (shared buffers are counted once per backend, so that sum overstates real memory)."""

    def __init__(self, processes: dict[str, list[int]], interval_s: float = 0.5) -> None:
        self.processes = processes
        self.interval_s = interval_s
        self.max_kb: dict[str, int] = {}
        self.last_kb: dict[str, int] = {}
        self._cpu0: dict[str, int] = {}
        self._cpu1: dict[str, int] = {}
        self._t0 = 0.0
        self._t1 = 0.0
        self._task: asyncio.Task[None] | None = None

    def _pids(self, name: str) -> list[int]:
        pids = list(self.processes[name])
        if name.startswith("postgresql"):
            pids += children_of(pids[0])
        return pids

    def add(self, name: str, pids: list[int]) -> None:
        """A process started after start() (e.g. the load generator): its CPU time counts from zero."""
        self.processes[name] = pids
        self._cpu0[name] = 0

    def sample(self) -> None:
        for name in list(self.processes):
            pids = self._pids(name)
            values = [rss_kb(p) for p in pids]
            kb = sum(v for v in values if v is not None)
            if kb:
                self.last_kb[name] = kb
                self.max_kb[name] = max(kb, self.max_kb.get(name, 0))
            ticks = [cpu_ticks(p) for p in pids]
            if any(t is not None for t in ticks):
                total = sum(t for t in ticks if t is not None)
                self._cpu0.setdefault(name, total)
                # A process that exits keeps its last sample (postgres backends come and go: keep the max).
                self._cpu1[name] = max(total, self._cpu1.get(name, 0))

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._cpu0 = {}
        self.sample()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sample()
        self._t1 = time.monotonic()

    def cpu_seconds(self, name: str) -> float:
        return max(0, self._cpu1.get(name, 0) - self._cpu0.get(name, 0)) / CLK_TCK

    def report(self) -> list[dict[str, Any]]:
        wall = max(self._t1 - self._t0, 1e-9)
        rows = []
        for name in self.processes:
            cpu = self.cpu_seconds(name)
            rows.append(
                {
                    "process": name,
                    "pids": self.processes[name],
                    "rss_mb_max": round(self.max_kb.get(name, 0) / 1024, 1),
                    "rss_mb_end": round(self.last_kb.get(name, 0) / 1024, 1),
                    "cpu_s": round(cpu, 2),
                    "cpu_pct": round(100 * cpu / wall, 1),
                }
            )
        return rows


# ---- statistics -----------------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def latency_summary_ms(values_s: Sequence[float]) -> dict[str, float | int | None]:
    ms = [v * 1000 for v in values_s]

    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 2)

    return {
        "count": len(ms),
        "p50_ms": r(percentile(ms, 50)),
        "p90_ms": r(percentile(ms, 90)),
        "p99_ms": r(percentile(ms, 99)),
        "max_ms": r(max(ms) if ms else None),
        "mean_ms": r(sum(ms) / len(ms) if ms else None),
    }


def slope(points: Iterable[tuple[float, float]]) -> float | None:
    """Least-squares slope of y over x."""
    pts = list(points)
    if len(pts) < 2:
        return None
    n = len(pts)
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in pts) / sxx


# ---- Prometheus text ---------------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group(2) or ""))
        try:
            out.append((m.group(1), labels, float(m.group(3))))
        except ValueError:
            continue
    return out


def metric_sum(samples: list[tuple[str, dict[str, str], float]], name: str, **match: str) -> float:
    return sum(
        v for n, labels, v in samples if n == name and all(labels.get(k) == want for k, want in match.items())
    )


async def scrape(client: httpx.AsyncClient, url: str) -> list[tuple[str, dict[str, str], float]]:
    resp = await client.get(url, timeout=5)
    resp.raise_for_status()
    return parse_metrics(resp.text)


# ---- Kafka -------------------------------------------------------------------------------------------------


async def topic_end_offsets(bootstrap: str, topic: str) -> int:
    """Sum of the end offsets of every partition (= records written; the idempotent producer writes no
    transaction markers)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic)
        if parts is None:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in parts])
        return int(sum(ends.values()))
    finally:
        await consumer.stop()


# ---- the system under test ------------------------------------------------------------------------------


@dataclass
class SystemUnderTest:
    local: LocalSystem
    env: BenchEnv
    prefix: str
    database: str
    clients: dict[str, httpx.AsyncClient] = field(default_factory=dict)

    @property
    def ports(self) -> Ports:
        return self.local.ports

    def topic(self, flow: str, kind: str = "main") -> str:
        from zaptrix.kafka import Flow, topics_for

        return getattr(topics_for(Flow(flow), self.prefix), kind)  # type: ignore[no-any-return]

    def pids(self) -> dict[str, list[int]]:
        out = {}
        for name, proc in self.local.processes.items():
            if proc.proc is not None and proc.proc.returncode is None:
                out[name] = [proc.proc.pid]
        return out

    def client(self, name: str) -> httpx.AsyncClient:
        """Simulator/metrics clients: graph, bitrix, meta_web, bitrix_web."""
        if name not in self.clients:
            port = {
                "graph": self.ports.graph,
                "bitrix": self.ports.bitrix,
                "meta_web": self.ports.meta_web,
                "bitrix_web": self.ports.bitrix_web,
                "meta_dispatcher": self.ports.meta_dispatcher,
                "bitrix_dispatcher": self.ports.bitrix_dispatcher,
                "mapper_metrics": self.ports.mapper_metrics,
            }[name]
            self.clients[name] = httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", timeout=30, limits=httpx.Limits(max_connections=64)
            )
        return self.clients[name]

    async def bind_channel(self) -> None:
        """The sandbox channel's credentials in token-keeper and its binding to the Open Line in the mapper
        (what LocalSystem.seed does after the app install)."""
        async with (
            self.local.grpc_channel("mapper") as mapper,
            self.local.grpc_channel("token-keeper") as token_keeper,
        ):
            await seed_sandbox_channel(mapper, token_keeper)


def _with_db(url: str, db: str) -> str:
    return url.rsplit("/", 1)[0] + f"/{db}"


@contextlib.asynccontextmanager
async def system(
    env: BenchEnv,
    name: str,
    only: set[str] | None = None,
    extra_env: dict[str, dict[str, str]] | None = None,
    seed: bool = True,
) -> AsyncIterator[SystemUnderTest]:
    """A fresh system for one scenario: its own database, its own topic prefix, free ports, processes
    started through dev/localsystem.py (the entrypoints the containers run). Stopped and cleaned up on
    any exit, including cancellation (Ctrl-C)."""
    import asyncpg
    from zaptrix.kafka import Flow, topics_for
    from zaptrix.kafka.admin import ensure_topics
    from zaptrix.settings import KafkaSettings

    tag = uuid.uuid4().hex[:6]
    db = f"bench_{name}_{tag}"
    prefix = f"bench{tag}"
    conn = await asyncpg.connect(env.pg_url)
    try:
        await conn.execute(f'CREATE DATABASE "{db}"')
    finally:
        await conn.close()
    topics = [t for flow in Flow for t in topics_for(flow, prefix).all()]
    kafka = KafkaSettings(bootstrap_servers=env.kafka, topic_prefix=prefix)
    await ensure_topics(kafka, topics)
    kport = int(env.kafka.rpartition(":")[2])
    state = env.state / "runs" / f"{name}-{tag}"
    local = LocalSystem(
        ports=Ports.random(pg=0, kafka=kport),
        state_dir=state,
        database_url=_with_db(env.pg_url, db),
        topic_prefix=prefix,
        extra_env=extra_env or {},
    )
    sut = SystemUnderTest(local, env, prefix, db)
    try:
        try:
            await local.start(only=only, ready_timeout_s=90)
        finally:
            for proc in local.processes.values():
                if proc.proc is not None:
                    remember_pid(proc.proc.pid)  # process groups (start_new_session): reaped on any exit
        if seed:
            if only is None:
                await local.seed()
            else:
                await sut.bind_channel()
        from bench.metrics_recorder import recording

        async with recording(local.ports, env.results, name):
            yield sut
    finally:
        for c in sut.clients.values():
            with contextlib.suppress(Exception):
                await c.aclose()
        started = [p.proc.pid for p in local.processes.values() if p.proc is not None]
        await asyncio.shield(local.stop())
        for pid in started:
            forget_pid(pid)
        with contextlib.suppress(Exception):
            await asyncio.shield(_cleanup(env, db, kafka, topics))


async def _cleanup(env: BenchEnv, db: str, kafka: Any, topics: list[str]) -> None:
    import asyncpg
    from aiokafka.admin import AIOKafkaAdminClient

    conn = await asyncpg.connect(env.pg_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    finally:
        await conn.close()
    admin = AIOKafkaAdminClient(bootstrap_servers=env.kafka)
    await admin.start()
    try:
        await admin.delete_topics(topics)
    finally:
        await admin.close()


async def wait_until(check: Any, timeout_s: float, interval_s: float = 0.5) -> bool:
    """Polls the async `check` until it returns true; False after the timeout (never raises)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if await check():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval_s)


def histogram_means(
    samples: list[tuple[str, dict[str, str], float]], name: str, by: str | None = None, seconds: bool = True
) -> dict[str, dict[str, float]]:
    """Mean and count of a Prometheus histogram (from _sum and _count), grouped by one label."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for n, labels, v in samples:
        key = labels.get(by, "") if by else ""
        if n == f"{name}_sum":
            sums[key] = sums.get(key, 0.0) + v
        elif n == f"{name}_count":
            counts[key] = counts.get(key, 0.0) + v
    key, factor = ("mean_ms", 1000.0) if seconds else ("mean", 1.0)
    return {
        k: {"count": counts[k], key: round(factor * sums.get(k, 0.0) / counts[k], 2)}
        for k in counts
        if counts[k]
    }


async def topic_event_times(bootstrap: str, topic: str, timeout_s: float = 30.0) -> dict[str, float]:
    """event id (the zaptrix-event-id header) -> the record's Kafka timestamp (CreateTime: when the
    producer built it, seconds) for every record now on the topic. Splits a latency into the part before
    Kafka and the part after it."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    out: dict[str, float] = {}
    try:
        await consumer._client.force_metadata_update()
        parts = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or set())]
        if not parts:
            return out
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            positions = [await consumer.position(tp) for tp in parts]
            if all(pos >= ends[tp] for pos, tp in zip(positions, parts, strict=True)):
                break
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batch.values():
                for rec in records:
                    event_id = next((v.decode() for k, v in rec.headers if k == "zaptrix-event-id"), None)
                    if event_id is not None:
                        out.setdefault(event_id, rec.timestamp / 1000)
    finally:
        await consumer.stop()
    return out
