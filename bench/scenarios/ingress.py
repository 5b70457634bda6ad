"""ingress: meta-ingress-web (one process, one worker) taking signed Meta webhooks.

Real token-keeper and mapper (the channel's credentials are seeded through their gRPC APIs), real
Kafka with acks=all on the same machine. wrk (one thread) cycles through pre-generated signed webhooks,
each a text message with a unique wamid. Baseline in the same run: a bare Sanic endpoint
(bench/bare_sanic.py) in the same single-process mode under the same wrk settings.

No loss: after the runs, the events on the wa-to-b24 topic (sum of end offsets) must equal the 200
answers meta-ingress counted (its /metrics) times the events per webhook (1).
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
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
SAMPLED_VARIANT = True
SAMPLER_10PCT = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
CORPUS_SIZE = 2000
EVENTS_PER_WEBHOOK = 1


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


async def _load(
    port: int,
    corpus: Any,
    env: BenchEnv,
    procs: dict[str, list[int]],
    label: str,
    main: str,
    concurrencies: tuple[int, ...] = CONCURRENCIES,
    profiles: Profiles | None = None,
) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
    """Warm-up, then one measured wrk run per concurrency; CPU/RSS of every process per run."""
    duration = env.seconds(10)
    await run_wrk(port, corpus, connections=8, duration_s=env.seconds(3, 1))  # warm-up, not reported
    runs, rows = [], []
    for c in concurrencies:
        monitor = ProcessMonitor(dict(procs))

        def started(pid: int, m: ProcessMonitor = monitor) -> None:
            m.add("wrk (load generator)", [pid])

        monitor.start()
        if profiles is not None and c == concurrencies[-1]:
            await profiles.start({main: procs[main][0]}, duration - 2)
        try:
            data = await run_wrk(port, corpus, connections=c, duration_s=duration, on_started=started)
        finally:
            await monitor.stop()
        data["label"] = label
        data["processes"] = monitor.report()
        cpu = monitor.cpu_seconds(main)
        # CPU time of the server per answered request: what the handler costs, whatever share of the
        # cores the (busy) machine gave it. 1e6 / it = the rate one fully available core would carry.
        data["server_cpu_us_per_request"] = (
            round(cpu * 1e6 / data["requests"], 1) if data["requests"] else None
        )
        data["server_cpu_pct"] = next(r["cpu_pct"] for r in data["processes"] if r["process"] == main)
        data["rps_per_full_core"] = (
            round(1e6 / data["server_cpu_us_per_request"]) if data["server_cpu_us_per_request"] else None
        )
        runs.append(data)
        rows.append(data["processes"])
        print(
            f"  {label:<12} -c{c:<3} {data['rps']:>9.1f} rps  p50 {data['p50_ms']:>6.2f} ms  "
            f"p99 {data['p99_ms']:>7.2f} ms  non-2xx {data['non2xx']}  socket errors {data['socket_errors']}  "
            f"server CPU {data['server_cpu_pct']:.0f}% = {data['server_cpu_us_per_request']} µs/request",
            flush=True,
        )
    return runs, rows


async def _baseline(env: BenchEnv, corpus: Any) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.bare_sanic",
        "--port",
        str(port),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    remember_pid(proc.pid)
    try:

        async def up() -> bool:
            try:
                async with httpx.AsyncClient(timeout=1) as c:
                    return (await c.get(f"http://127.0.0.1:{port}/health")).status_code == 200
            except httpx.HTTPError:
                return False

        if not await wait_until(up, 30, 0.2):
            raise RuntimeError("bare Sanic baseline did not come up")
        main = "bare-sanic (baseline)"
        return await _load(port, corpus, env, {main: [proc.pid]}, "bare-sanic", main)
    finally:
        await stop_subprocess(proc)


async def run(env: BenchEnv) -> Result:
    res = Result(
        NAME,
        measured="meta-ingress-web, 1 process: signed webhooks/s and request→200 latency (wrk -t1, closed loop)",
        target=f"≥ {TARGET_RPS:,.0f} webhooks/s with p99 ≤ {TARGET_P99_MS:g} ms and ≥ {TARGET_SHARE_OF_BARE:g} of "
        "bare Sanic's rate in the same run; no loss (Kafka events = 200s)",
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
    try:
        print("  baseline: bare Sanic", flush=True)
        base_runs, base_rows = await _baseline(env, corpus)
        print("  system: mapper, token-keeper, meta-ingress-web (+ Kafka, PostgreSQL)", flush=True)
        async with system(env, NAME, only={"mapper", "token-keeper", "meta-ingress"}) as sut:
            procs = sut.pids() | stack_pids(env)
            t0 = time.time()
            profiles = Profiles(env, NAME)
            runs, rows = await _load(
                sut.ports.meta_web, corpus, env, procs, "meta-ingress", "meta-ingress", profiles=profiles
            )
            res.details["profiles"] = await profiles.collect()
            res.details["load_wall_s"] = round(time.time() - t0, 1)
            ok_server, all_server = await _answered(sut)
            log_bytes = (sut.local.state_dir / "logs" / "meta-ingress.log").stat().st_size
            # Variant: the same process with 10% head sampling (OTEL_TRACES_SAMPLER), to show what the
            # tracing SDK costs per webhook (the default samples every request).
            if SAMPLED_VARIANT:
                old = sut.pids().get("meta-ingress", [])
                await sut.local.stop_process("meta-ingress")
                for pid in old:
                    forget_pid(pid)
                proc = next(p for p in sut.local.definitions() if p.name == "meta-ingress")
                proc.env = proc.env | SAMPLER_10PCT
                await sut.local.start_process(proc, 60)
                assert proc.proc is not None
                remember_pid(proc.proc.pid)
                await sut.bind_channel()  # idempotent; the credentials cache of the new process starts cold
                procs = sut.pids() | stack_pids(env)
                sampled, srows = await _load(
                    sut.ports.meta_web,
                    corpus,
                    env,
                    procs,
                    "meta-ingress (10% sampled)",
                    "meta-ingress",
                    (32,),
                )
                rows += srows
                ok2, all2 = await _answered(sut)
                ok_server += ok2
                all_server += all2
                res.details["sampled_10pct_runs"] = sampled
            events = await topic_end_offsets(env.kafka, sut.topic("wa-to-b24"))
    finally:
        corpus.unlink(missing_ok=True)

    res.details["baseline_runs"] = base_runs
    res.details["runs"] = runs
    res.processes = _merge_processes(base_rows + rows)
    expected = int(ok_server) * EVENTS_PER_WEBHOOK
    lost = max(0, expected - events)
    extra = max(0, events - expected)
    # wrk closes its connections at the end of each run; a request whose events were already durable but
    # whose 200 never went out is not counted as a 200 (Meta would retry it: at-least-once, deduplicated
    # downstream). At most one per open connection per run.
    sampled_runs: list[dict[str, Any]] = res.details.get("sampled_10pct_runs", [])
    # + the warm-up runs' 8 connections
    extra_bound = sum(r["connections"] + 8 for r in [*runs, *sampled_runs][:1]) + sum(
        r["connections"] for r in [*runs, *sampled_runs][1:]
    )
    extra_bound += 8 if sampled_runs else 0
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
    bare_rps = {b["connections"]: b["rps"] for b in base_runs}
    for r in runs:
        bare = bare_rps.get(r["connections"])
        r["share_of_bare_sanic"] = round(r["rps"] / bare, 3) if bare else None
        r_ok = (
            r["rps"] >= TARGET_RPS
            and r["p99_ms"] <= TARGET_P99_MS
            and r["non2xx"] == 0
            and (r["share_of_bare_sanic"] or 0.0) >= TARGET_SHARE_OF_BARE
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
            f"{r['share_of_bare_sanic'] or 0:.3f} of bare Sanic)"
            for r in runs
        )
        + f"; non-2xx {non2xx}; Kafka events {events} vs 200s {int(ok_server)}"
        + (f": {lost} LOST" if lost else "")
        + (f" (+{extra} from requests abandoned at wrk's stop)" if extra else "")
    )
    res.baseline = "; ".join(
        f"bare Sanic -c{b['connections']}: {b['rps']:,.0f} rps, p99 {b['p99_ms']:.1f} ms, "
        f"{b['server_cpu_us_per_request']:.0f} µs/request (meta-ingress: {r['rps'] / b['rps']:.1%} of its rps, "
        f"{r['server_cpu_us_per_request'] / b['server_cpu_us_per_request']:.1f}x its CPU per request)"
        for b, r in zip(base_runs, runs, strict=True)
        if b["rps"] and b["server_cpu_us_per_request"]
    )
    res.notes.append(
        "wrk runs on the same 2 cores as meta-ingress, Kafka and PostgreSQL; closed loop, so latency grows "
        "with -c at saturation"
    )
    res.notes.append(
        "telemetry as configured by default (every request sampled) but not exported: no OTLP endpoint in the "
        "bench, so the production cost is a little higher (span export on the BatchSpanProcessor thread)"
    )
    res.notes += profile_notes(res.details.get("profiles", {}))
    for r in sampled_runs:
        res.notes.append(
            f"same process with OTEL_TRACES_SAMPLER=parentbased_traceidratio, ARG=0.1: -c{r['connections']} "
            f"{r['rps']:,.0f} rps, p50 {r['p50_ms']:.1f} / p99 {r['p99_ms']:.1f} ms, "
            f"{r['server_cpu_us_per_request']:.0f} µs/webhook (not counted for the verdict)"
        )
    return res
