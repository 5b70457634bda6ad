"""ingress: meta-ingress-web (one process, one worker) taking signed Meta webhooks.

Real token-keeper and mapper (the channel's credentials are seeded through their gRPC APIs), real
Kafka with acks=all on the same machine. wrk (one thread) cycles through pre-generated signed webhooks,
each a text message with a unique wamid. Baseline in the same run: a bare Sanic endpoint
(bench/bare_sanic.py) in the same single-process mode under the same wrk settings.

Interleaved: bare Sanic stays up beside the system, and at each concurrency the two take turns (ROUNDS
pairs of short runs, bare first). The share of bare Sanic is the median of each pair's ratio. This box's
speed drifts by a third within a minute (the same CPU loop takes 317-433 ms from one run to the next), so
a baseline measured a minute apart compares the machine with itself, not the code with Sanic.

No loss: after the runs, the events on the wa-to-b24 topic (sum of end offsets) must equal the 200
answers meta-ingress counted (its /metrics) times the events per webhook (1).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    BenchEnv,
    ProcessMonitor,
    SystemUnderTest,
    forget_pid,
    free_port,
    metric_sum,
    remember_pid,
    scrape,
    stack_pids,
    stop_subprocess,
    system,
    topic_end_offsets,
    wait_until,
)
from bench.profiling import Profiles
from bench.profiling import notes as profile_notes
from bench.result import Result, verdict
from bench.webhooks import write_wrk_corpus
from bench.wrk import run_wrk

NAME = "ingress"
TARGET_RPS = 3000.0
TARGET_P99_MS = 25.0
TARGET_SHARE_OF_BARE = 0.25  # of bare Sanic's webhooks/s at the same -c in the same run (issue 14)
CONCURRENCIES = (8, 32)
ROUNDS = 3  # (bare Sanic, meta-ingress) pairs per concurrency, one right after the other
RUN_S = 6.0  # each run of a pair
WARMUP_S = 3.0
SAMPLED_VARIANT = True
SAMPLED_ROUNDS = 2
SAMPLER_10PCT = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
EXPORTED_VARIANT = True  # every span exported over OTLP/gRPC to bench/otlp_sink.py, as to Jaeger
SINK = "OTLP sink (stand-in collector)"
CORPUS_SIZE = 2000
EVENTS_PER_WEBHOOK = 1
BARE = "bare-sanic (baseline)"
OURS = "meta-ingress"


def _merge_processes(rows_per_run: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for rows in rows_per_run:
        for row in rows:
            cur = merged.setdefault(row["process"], dict(row))
            cur["rss_mb_max"] = max(cur["rss_mb_max"], row["rss_mb_max"])
            cur["rss_mb_end"] = row["rss_mb_end"]
            cur["cpu_pct_max"] = max(cur.get("cpu_pct_max", 0.0), row["cpu_pct"])
    for row in merged.values():
        row.pop("cpu_s", None)
        row.pop("cpu_pct", None)
    return list(merged.values())


async def _answered(sut: SystemUnderTest) -> tuple[int, int]:
    """(200 answers, all answers) to POST /webhooks/meta that meta-ingress counted (its /metrics)."""
    samples = await scrape(sut.client("meta_web"), "/metrics")
    ok = metric_sum(
        samples, "zaptrix_http_requests_total", route="/webhooks/meta", method="POST", status="200"
    )
    every = metric_sum(samples, "zaptrix_http_requests_total", route="/webhooks/meta", method="POST")
    return int(ok), int(every)


async def _measure(
    port: int,
    corpus: Any,
    connections: int,
    duration_s: float,
    procs: dict[str, list[int]],
    label: str,
    main: str,
    profiles: Profiles | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One measured wrk run: wrk's numbers, the server's CPU per request, CPU/RSS of every process."""
    monitor = ProcessMonitor(dict(procs))

    def started(pid: int) -> None:
        monitor.add("wrk (load generator)", [pid])

    monitor.start()
    if profiles is not None:
        await profiles.start({main: procs[main][0]}, max(1.0, duration_s - 2))
    try:
        data = await run_wrk(port, corpus, connections=connections, duration_s=duration_s, on_started=started)
    finally:
        await monitor.stop()
    data["label"] = label
    data["processes"] = monitor.report()
    data["server_cpu_s"] = monitor.cpu_seconds(main)
    # CPU time of the server per answered request: what the handler costs, whatever share of the cores
    # the (busy) machine gave it. 1e6 / it = the rate one fully available core would carry.
    data["server_cpu_us_per_request"] = (
        round(data["server_cpu_s"] * 1e6 / data["requests"], 1) if data["requests"] else None
    )
    data["server_cpu_pct"] = next(r["cpu_pct"] for r in data["processes"] if r["process"] == main)
    print(
        f"  {label:<12} -c{connections:<3} {data['rps']:>9.1f} rps  p50 {data['p50_ms']:>6.2f} ms  "
        f"p99 {data['p99_ms']:>7.2f} ms  non-2xx {data['non2xx']}  socket errors {data['socket_errors']}  "
        f"server CPU {data['server_cpu_pct']:.0f}% = {data['server_cpu_us_per_request']} µs/request",
        flush=True,
    )
    return data, data["processes"]


def _combined(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The rounds of one server at one concurrency as one row: the median rate and p50, the worst p99,
    CPU per request over all of them; each round kept under "rounds"."""
    requests = sum(r["requests"] for r in rounds)
    cpu_s = sum(r["server_cpu_s"] for r in rounds)
    cpu_us = round(cpu_s * 1e6 / requests, 1) if requests else None
    return {
        "label": rounds[0]["label"],
        "connections": rounds[0]["connections"],
        "rps": round(statistics.median(r["rps"] for r in rounds), 1),
        "p50_ms": round(statistics.median(r["p50_ms"] for r in rounds), 2),
        "p99_ms": max(r["p99_ms"] for r in rounds),
        "requests": requests,
        "non2xx": sum(r["non2xx"] for r in rounds),
        "socket_errors": sum(r["socket_errors"] for r in rounds),
        "server_cpu_us_per_request": cpu_us,
        "server_cpu_pct": round(statistics.median(r["server_cpu_pct"] for r in rounds), 1),
        "rps_per_full_core": round(1e6 / cpu_us) if cpu_us else None,
        "rounds": [{k: v for k, v in r.items() if k != "processes"} for r in rounds],
    }


@contextlib.asynccontextmanager
async def _helper(module: str, args: list[str], up: Callable[[], Awaitable[bool]]) -> AsyncIterator[int]:
    """A helper process of the scenario (``python -m module args``), up until the block ends: its pid."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    remember_pid(proc.pid)
    try:
        if not await wait_until(up, 30, 0.2):
            raise RuntimeError(f"{module} did not come up")
        yield proc.pid
    finally:
        await stop_subprocess(proc)


@contextlib.asynccontextmanager
async def _bare_sanic() -> AsyncIterator[tuple[int, int]]:
    """The baseline server, up for the whole scenario: (port, pid)."""
    port = free_port()

    async def up() -> bool:
        try:
            async with httpx.AsyncClient(timeout=1) as c:
                return (await c.get(f"http://127.0.0.1:{port}/health")).status_code == 200
        except httpx.HTTPError:
            return False

    async with _helper("bench.bare_sanic", ["--port", str(port)], up) as pid:
        yield port, pid


@contextlib.asynccontextmanager
async def _otlp_sink(work: Path) -> AsyncIterator[tuple[str, int, Callable[[], int]]]:
    """The stand-in OTLP collector (bench/otlp_sink.py): (endpoint, pid, spans received so far)."""
    port = free_port()
    count_file = work / f"otlp-spans-{port}"
    count_file.unlink(missing_ok=True)

    def spans() -> int:
        try:
            return int(count_file.read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    async def up() -> bool:
        return count_file.exists()

    try:
        async with _helper(
            "bench.otlp_sink", ["--port", str(port), "--count-file", str(count_file)], up
        ) as pid:
            yield f"http://127.0.0.1:{port}", pid, spans
    finally:
        count_file.unlink(missing_ok=True)


async def _restart(sut: SystemUnderTest, extra_env: dict[str, str]) -> dict[str, list[int]]:
    """meta-ingress restarted with ``extra_env`` added to its environment: the system's processes."""
    old = sut.pids().get("meta-ingress", [])
    await sut.local.stop_process("meta-ingress")
    for pid in old:
        forget_pid(pid)
    proc = next(p for p in sut.local.definitions() if p.name == "meta-ingress")
    proc.env = proc.env | extra_env
    await sut.local.start_process(proc, 60)
    assert proc.proc is not None
    remember_pid(proc.proc.pid)
    await sut.bind_channel()  # idempotent; the credentials cache of the new process starts cold
    return sut.pids()


class _Pairs:
    """Bare Sanic and meta-ingress in turns at each concurrency; every run's numbers and processes."""

    def __init__(self, env: BenchEnv, corpus: Any, bare: tuple[int, int]) -> None:
        self.env = env
        self.corpus = corpus
        self.bare_port, bare_pid = bare
        self.bare_procs = {BARE: [bare_pid]}
        self.rows: list[list[dict[str, Any]]] = []
        self.connections_to_ours = 0  # every wrk connection opened to meta-ingress (the loss check's bound)

    async def warm_up(self, port: int) -> None:
        await run_wrk(self.bare_port, self.corpus, connections=8, duration_s=self.env.seconds(WARMUP_S, 1))
        await run_wrk(port, self.corpus, connections=8, duration_s=self.env.seconds(WARMUP_S, 1))
        self.connections_to_ours += 8

    async def run(
        self,
        port: int,
        procs: dict[str, list[int]],
        label: str,
        connections: int,
        rounds: int,
        profiles: Profiles | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any], list[float]]:
        """(bare's row, ours' row, each pair's share of bare Sanic) at one concurrency."""
        duration = self.env.seconds(RUN_S)
        bare_runs, our_runs, shares = [], [], []
        for i in range(rounds):
            b, brows = await _measure(
                self.bare_port, self.corpus, connections, duration, self.bare_procs, "bare-sanic", BARE
            )
            o, orows = await _measure(
                port,
                self.corpus,
                connections,
                duration,
                procs,
                label,
                OURS,
                profiles if i == rounds - 1 else None,
            )
            self.connections_to_ours += connections
            self.rows += [brows, orows]
            bare_runs.append(b)
            our_runs.append(o)
            shares.append(round(o["rps"] / b["rps"], 3) if b["rps"] else 0.0)
            print(f"  {'':<12} -c{connections:<3} round {i + 1}: {shares[-1]:.3f} of bare Sanic", flush=True)
        ours = _combined(our_runs)
        ours["share_of_bare_sanic"] = round(statistics.median(shares), 3)
        ours["share_of_bare_sanic_pairs"] = shares
        return _combined(bare_runs), ours, shares


async def run(env: BenchEnv) -> Result:
    res = Result(
        NAME,
        measured="meta-ingress-web, 1 process: signed webhooks/s and request→200 latency (wrk -t1, closed loop)",
        target=f"≥ {TARGET_RPS:,.0f} webhooks/s with p99 ≤ {TARGET_P99_MS:g} ms and ≥ {TARGET_SHARE_OF_BARE:g} of "
        "bare Sanic's rate in the same run (median of the interleaved pairs); no loss (Kafka events = 200s)",
    )
    run_id = uuid.uuid4().hex[:6]
    work = env.state / "bench-data"
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / f"webhooks-{run_id}.tsv"
    body_bytes = write_wrk_corpus(corpus, run_id, CORPUS_SIZE, customers=200)
    res.details["corpus"] = {
        "webhooks": CORPUS_SIZE,
        "mean_body_bytes": body_bytes,
        "events_per_webhook": EVENTS_PER_WEBHOOK,
        "note": "wrk cycles through the corpus; a run longer than the corpus repeats bodies (ingress does "
        "not dedupe, so every 200 is one more event on the topic)",
    }
    base_runs: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    sampled: list[dict[str, Any]] = []
    exported: list[dict[str, Any]] = []
    try:
        print("  baseline: bare Sanic, up beside the system; the two take turns", flush=True)
        print("  system: mapper, token-keeper, meta-ingress-web (+ Kafka, PostgreSQL)", flush=True)
        async with (
            _bare_sanic() as bare,
            system(env, NAME, only={"mapper", "token-keeper", "meta-ingress"}) as sut,
        ):
            pairs = _Pairs(env, corpus, bare)
            port = sut.ports.meta_web
            procs = sut.pids() | stack_pids(env)
            t0 = time.time()
            profiles = Profiles(env, NAME)
            await pairs.warm_up(port)
            for c in CONCURRENCIES:
                last = c == CONCURRENCIES[-1]
                b, o, _ = await pairs.run(port, procs, OURS, c, ROUNDS, profiles if last else None)
                base_runs.append(b)
                runs.append(o)
            res.details["profiles"] = await profiles.collect()
            res.details["load_wall_s"] = round(time.time() - t0, 1)
            ok_server, all_server = await _answered(sut)
            log_bytes = (sut.local.state_dir / "logs" / "meta-ingress.log").stat().st_size
            # Variants, reported beside the goal figure: the same process with 10% head sampling (what the
            # tracing SDK costs per webhook; the default samples every request), and exporting every span
            # over OTLP to a stand-in collector (what production pays on top: the BatchSpanProcessor
            # thread encodes each span).
            if SAMPLED_VARIANT:
                procs = await _restart(sut, SAMPLER_10PCT) | stack_pids(env)
                await pairs.warm_up(port)
                _, s, _ = await pairs.run(port, procs, "meta-ingress (10% sampled)", 32, SAMPLED_ROUNDS)
                sampled.append(s)
                ok2, all2 = await _answered(sut)
                ok_server += ok2
                all_server += all2
                res.details["sampled_10pct_runs"] = sampled
            if EXPORTED_VARIANT:
                async with _otlp_sink(work) as (endpoint, sink_pid, spans):
                    procs = await _restart(sut, {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})
                    procs |= stack_pids(env) | {SINK: [sink_pid]}
                    await pairs.warm_up(port)
                    _, x, _ = await pairs.run(port, procs, "meta-ingress (exported)", 32, SAMPLED_ROUNDS)
                    ok3, all3 = await _answered(sut)

                    async def all_in() -> bool:  # the last batch leaves within the processor's 5 s schedule
                        return spans() >= ok3

                    await wait_until(all_in, 12, 0.5)
                    x["spans_received"] = spans()
                    x["answers_200"] = ok3
                    exported.append(x)
                ok_server += ok3
                all_server += all3
                res.details["exported_runs"] = exported
            events = await topic_end_offsets(env.kafka, sut.topic("wa-to-b24"))
    finally:
        corpus.unlink(missing_ok=True)

    res.details["baseline_runs"] = base_runs
    res.details["runs"] = runs
    res.processes = _merge_processes(pairs.rows)
    expected = int(ok_server) * EVENTS_PER_WEBHOOK
    lost = max(0, expected - events)
    extra = max(0, events - expected)
    # wrk closes its connections at the end of each run; a request whose events were already durable but
    # whose 200 never went out is not counted as a 200 (Meta would retry it: at-least-once, deduplicated
    # downstream). At most one per open connection per run, warm-ups included.
    extra_bound = pairs.connections_to_ours
    res.details["loss_check"] = {
        "post_answers_counted_by_meta_ingress": int(all_server),
        "answers_200_counted_by_meta_ingress": int(ok_server),
        "events_on_topic": events,
        "missing_events": lost,
        "extra_events_of_abandoned_requests": extra,
        "extra_events_bound": extra_bound,
    }
    res.details["meta_ingress_log_bytes"] = log_bytes
    best = None
    for r in runs:
        r_ok = (
            r["rps"] >= TARGET_RPS
            and r["p99_ms"] <= TARGET_P99_MS
            and r["non2xx"] == 0
            and r["share_of_bare_sanic"] >= TARGET_SHARE_OF_BARE
        )
        r["meets_target"] = r_ok
        if best is None or (r_ok, r["rps"]) > (best["meets_target"], best["rps"]):
            best = r
    assert best is not None
    non2xx = sum(r["non2xx"] for r in runs)
    passed = bool(best["meets_target"]) and lost == 0 and extra <= extra_bound and non2xx == 0
    res.verdict = verdict(passed)
    res.figure = (
        "; ".join(
            f"-c{r['connections']}: {r['rps']:,.0f} rps, p50 {r['p50_ms']:.1f} / p99 {r['p99_ms']:.1f} ms "
            f"(server CPU {r['server_cpu_pct']:.0f}%, {r['server_cpu_us_per_request']:.0f} µs/webhook, "
            f"{r['share_of_bare_sanic']:.3f} of bare Sanic: pairs "
            + " / ".join(f"{s:.3f}" for s in r["share_of_bare_sanic_pairs"])
            + ")"
            for r in runs
        )
        + f"; non-2xx {non2xx}; Kafka events {events} vs 200s {int(ok_server)}"
        + (f": {lost} LOST" if lost else "")
        + (f" (+{extra} from requests abandoned at wrk's stop)" if extra else "")
    )
    res.baseline = "; ".join(
        f"bare Sanic -c{b['connections']}: {b['rps']:,.0f} rps, p99 {b['p99_ms']:.1f} ms, "
        f"{b['server_cpu_us_per_request']:.0f} µs/request (meta-ingress: "
        f"{r['server_cpu_us_per_request'] / b['server_cpu_us_per_request']:.1f}x its CPU per request)"
        for b, r in zip(base_runs, runs, strict=True)
        if b["rps"] and b["server_cpu_us_per_request"] and r["server_cpu_us_per_request"]
    )
    res.notes.append(
        f"at each concurrency {ROUNDS} pairs of {RUN_S:g} s runs, bare Sanic then meta-ingress; rates are the "
        "median of the rounds, p99 the worst round, the share the median of the pairs' ratios"
    )
    res.notes.append(
        "wrk runs on the same 2 cores as meta-ingress, Kafka and PostgreSQL; closed loop, so latency grows "
        "with -c at saturation"
    )
    res.notes.append(
        "telemetry as configured by default (every request sampled) but not exported: no OTLP endpoint for the "
        "goal figure; the exported variant below shows what export adds"
    )
    res.notes += profile_notes(res.details.get("profiles", {}))
    for r in sampled:
        res.notes.append(
            f"same process with OTEL_TRACES_SAMPLER=parentbased_traceidratio, ARG=0.1: -c{r['connections']} "
            f"{r['rps']:,.0f} rps, p50 {r['p50_ms']:.1f} / p99 {r['p99_ms']:.1f} ms, "
            f"{r['server_cpu_us_per_request']:.0f} µs/webhook, {r['share_of_bare_sanic']:.3f} of bare Sanic "
            "(not counted for the verdict)"
        )
    for r in exported:
        res.notes.append(
            f"same process exporting every span over OTLP/gRPC (bench/otlp_sink.py): -c{r['connections']} "
            f"{r['rps']:,.0f} rps, p50 {r['p50_ms']:.1f} / p99 {r['p99_ms']:.1f} ms, "
            f"{r['server_cpu_us_per_request']:.0f} µs/webhook, {r['share_of_bare_sanic']:.3f} of bare Sanic; "
            f"{r['spans_received']:,} spans received for {r['answers_200']:,} webhooks answered 200 "
            "(not counted for the verdict)"
        )
    return res
