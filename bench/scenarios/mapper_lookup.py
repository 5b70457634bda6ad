"""mapper_lookup: the mapper's per-message lookups with 10k, 100k and 1M conversations in PostgreSQL.

The real `mapper-server` (migrated by its own alembic scripts) on the bench's PostgreSQL. Its tables are
filled with SQL (generate_series, one INSERT ... SELECT per table and size step, then ANALYZE): 1,000
channels over 200 portals, conversations spread evenly over the channels, each with a Bitrix24 contact
and chat, and PROCESSED_PER_CONVERSATION processed-event rows per conversation (random wamid-like ids,
processed within the dedupe retention, so the expiry sweep leaves them alone). Sizes grow in place
(10k, then +90k, then +900k): each step measures the same calls on a bigger table.

Per size, at a fixed rate (open loop: call i due at t0 + i / rate) with random keys from the seeded set,
over mutual TLS as the dispatchers call it (their own client certificates, so the caller allowlist is in
the path):
- GetOrCreateConversation of an existing conversation (bitrix dispatcher, every customer message);
- CheckProcessed of a new event id (bitrix and meta dispatchers, every event: a new event is the common
  case, and "not processed" is never cached, so it is always a primary-key probe);
- CheckProcessed of a seeded (processed) event id (a redelivery; the mapper may answer from its cache);
- FindConversation by portal + external chat id (meta dispatcher and bitrix-ingress: the reverse lookup
  of every operator message).
p50/p99 as the client sees them, and the mapper's CPU per call (/proc). At the largest size, EXPLAIN
(ANALYZE, BUFFERS) of each hot statement (the repository's own SQL): index scans expected, no Seq Scan.

BENCH_SCALE multiplies the sizes (0.1: 1k, 10k, 100k) and the measuring time.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from bench.common import BenchEnv, ProcessMonitor, latency_summary_ms, scrape, stack_pids, system
from bench.lookup_drain_plots import register, save
from bench.result import Result, verdict

register()

NAME = "mapper_lookup"
SIZES = (10_000, 100_000, 1_000_000)
PORTALS = 200
CHANNELS = 1_000  # 5 WhatsApp numbers per portal
PROCESSED_PER_CONVERSATION = 3
RATE_PER_RPC = 50.0  # calls/s of each RPC, all four interleaved (200 calls/s in all)
SECONDS = 15.0
STATEMENT_SAMPLES = 300  # EXPLAIN ANALYZE per statement and size
WARMUP_S = 1.0
SALT = "zaptrix-bench"

# Deterministic keys: the client derives any seeded key from its number without reading the tables.


def pnid(channel: int) -> str:
    return f"1{channel:014d}"


def member(channel: int) -> str:
    return f"bench-portal-{channel % PORTALS:04d}"


def wa_id(i: int) -> str:
    return f"49{i:011d}"


def external_chat_id(i: int) -> str:
    return "wa_" + hashlib.md5(f"{SALT}c{i}".encode()).hexdigest()


def event_id(j: int) -> str:
    return "wa:wamid.HBgM" + hashlib.md5(f"{SALT}e{j}".encode()).hexdigest()


SEED_CHANNELS = f"""
INSERT INTO mapper.channel_binding (phone_number_id, display_phone_number, member_id, line_id, connector_id)
SELECT '1' || lpad(c::text, 14, '0'), '1555' || lpad(c::text, 7, '0'),
       'bench-portal-' || lpad((c % {PORTALS})::text, 4, '0'), 1 + c / {PORTALS}, 'zaptrix_whatsapp'
FROM generate_series(0, {CHANNELS - 1}) AS c"""

# Same key functions as above, in SQL ($1..$2: the conversation numbers of this step).
SEED_CONVERSATIONS = f"""
INSERT INTO mapper.conversation_mapping (phone_number_id, meta_whatsapp_id, customer_phone, member_id,
    external_chat_id, bitrix_contact_id, bitrix_chat_id, contact_name, last_message_at,
    last_customer_message_at, created_at)
SELECT '1' || lpad((i % {CHANNELS})::text, 14, '0'),
       '49' || lpad(i::text, 11, '0'),
       '49' || lpad(i::text, 11, '0'),
       'bench-portal-' || lpad((i % {CHANNELS} % {PORTALS})::text, 4, '0'),
       'wa_' || md5('{SALT}c' || i),
       (100000 + i)::text,
       (200000 + i)::text,
       'Customer ' || i,
       t, t, t - interval '30 days'
FROM generate_series($1::bigint, $2::bigint - 1) AS i,
     LATERAL (SELECT now() - (i % 2592000) * interval '1 second') AS ts(t)"""

# Each conversation's phone as its identity alias, as the mapper records it for a new customer.
SEED_ALIASES = """
INSERT INTO mapper.conversation_alias (phone_number_id, kind, value, conversation_id)
SELECT phone_number_id, 'phone', meta_whatsapp_id, id FROM mapper.conversation_mapping
WHERE meta_whatsapp_id >= '49' || lpad($1::bigint::text, 11, '0')
  AND meta_whatsapp_id < '49' || lpad($2::bigint::text, 11, '0')"""

SEED_PROCESSED = f"""
INSERT INTO mapper.processed_event (event_id, result, processed_at)
SELECT 'wa:wamid.HBgM' || md5('{SALT}e' || j), 'ok:' || (300000 + j),
       now() - (j % 604800) * interval '1 second'
FROM generate_series($1::bigint, $2::bigint - 1) AS j
ORDER BY 1"""


async def seed(url: str, start: int, end: int) -> dict[str, float]:
    """Conversations [start, end) and their processed events, the two tables on two connections at once.
    Processed events go in sorted by their (random) id: the primary key then grows at its right edge
    instead of splitting pages all over an index larger than shared_buffers."""
    import asyncpg

    async def timed(sql: str, *args: int) -> float:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("SET work_mem = '512MB'")
            t = time.monotonic()
            await conn.execute(sql, *args)
            return time.monotonic() - t
        finally:
            await conn.close()

    async def conversations() -> float:
        return await timed(SEED_CONVERSATIONS, start, end) + await timed(SEED_ALIASES, start, end)

    t0 = time.monotonic()
    conv_s, processed_s = await asyncio.gather(
        conversations(),
        timed(SEED_PROCESSED, start * PROCESSED_PER_CONVERSATION, end * PROCESSED_PER_CONVERSATION),
    )
    t1 = time.monotonic()
    # As the tables are in steady state: vacuumed (visibility map, hint bits set, so the measurement's
    # reads do not write), analyzed, and the dirty pages flushed.
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("VACUUM (ANALYZE) mapper.conversation_mapping")
        await conn.execute("VACUUM (ANALYZE) mapper.conversation_alias")
        await conn.execute("VACUUM (ANALYZE) mapper.processed_event")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    t2 = time.monotonic()
    return {
        "conversations_s": round(conv_s, 1),
        "processed_events_s": round(processed_s, 1),
        "inserts_wall_s": round(t1 - t0, 1),
        "vacuum_analyze_s": round(t2 - t1, 1),
        "total_s": round(t2 - t0, 1),
    }


def server_times(before: list[Any], after: list[Any]) -> dict[str, dict[str, float | None]]:
    """The mapper's own handling time per method between two scrapes of its /metrics
    (zaptrix_mapper_rpc_seconds: server side, without transport): count, mean, and the upper bound of the
    bucket holding the 99th percentile."""
    name = "zaptrix_mapper_rpc_seconds"

    def by(samples: list[Any], suffix: str) -> dict[tuple[str, str], float]:
        return {
            (lb.get("method", ""), lb.get("le", "")): v for n, lb, v in samples if n == f"{name}_{suffix}"
        }

    out: dict[str, dict[str, float | None]] = {}
    b0, b1 = by(before, "bucket"), by(after, "bucket")
    c0, c1 = by(before, "count"), by(after, "count")
    s0, s1 = by(before, "sum"), by(after, "sum")
    for method, _ in c1:
        count = c1[(method, "")] - c0.get((method, ""), 0.0)
        if count <= 0:
            continue
        buckets = sorted(
            (float(le), b1[(m, le)] - b0.get((m, le), 0.0)) for (m, le) in b1 if m == method and le != "+Inf"
        )
        p99 = next((le for le, n in buckets if n >= 0.99 * count), None)
        out[method] = {
            "count": count,
            "mean_ms": round(1000 * (s1[(method, "")] - s0.get((method, ""), 0.0)) / count, 3),
            "p99_le_ms": None if p99 is None else round(1000 * p99, 2),
        }
    return out


def statements(size: int, rng: random.Random) -> dict[str, tuple[str, tuple[Any, ...]]]:
    """The statements behind the measured RPCs (the repository's own SQL, so a changed query is what is
    measured), each with a random seeded key."""
    from mapper import identity
    from mapper import repository as r

    i = rng.randrange(size)
    ch = i % CHANNELS
    return {
        "GetOrCreateConversation (existing)": (  # the read of a known customer (identity aliases)
            identity._FIND,
            (pnid(ch), ["phone"], [wa_id(i)]),
        ),
        "CheckProcessed": (
            "SELECT result FROM mapper.processed_event WHERE event_id = $1",
            (event_id(rng.randrange(size * PROCESSED_PER_CONVERSATION)),),
        ),
        "FindConversation (portal, external chat)": (
            f"{r._SELECT_CONVERSATION} WHERE external_chat_id = $1 AND member_id = $2",
            (external_chat_id(i), member(ch)),
        ),
    }


async def statement_times(conn: Any, size: int, samples: int) -> dict[str, dict[str, Any]]:
    """Each statement's own execution time inside PostgreSQL (EXPLAIN ANALYZE's "Execution Time") over
    `samples` random keys, and the buffers it touched: the lookup's cost without gRPC, the mapper's
    Python and the box's CPU contention."""
    rng = random.Random(size * 7)
    times: dict[str, list[float]] = {}
    hit: dict[str, int] = {}
    read: dict[str, int] = {}
    for _ in range(samples):
        for name, (sql, args) in statements(size, rng).items():
            raw = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", *args)
            doc = (json.loads(raw) if isinstance(raw, str) else raw)[0]
            times.setdefault(name, []).append(float(doc["Execution Time"]) / 1000)
            hit[name] = hit.get(name, 0) + int(doc["Plan"].get("Shared Hit Blocks", 0))
            read[name] = read.get(name, 0) + int(doc["Plan"].get("Shared Read Blocks", 0))
    return {
        n: latency_summary_ms(v)
        | {
            "buffers_hit_per_call": round(hit[n] / samples, 2),
            "buffers_read_per_call": round(read[n] / samples, 2),
        }
        for n, v in times.items()
    }


async def explain(conn: Any, size: int) -> dict[str, dict[str, Any]]:
    """EXPLAIN (ANALYZE, BUFFERS) of each hot statement with one seeded key."""
    out: dict[str, dict[str, Any]] = {}
    for name, (sql, args) in statements(size, random.Random()).items():
        rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *args)
        plan = [row[0] for row in rows]
        out[name] = {
            "plan": plan,
            "seq_scan": any("Seq Scan" in line for line in plan),
            "index_scan": any("Index" in line for line in plan),
        }
    return out


async def measure(
    calls: dict[str, Callable[[int], Awaitable[Any]]], rate_per_rpc: float, seconds: float
) -> dict[str, list[float]]:
    """Open loop: the k-th call of each RPC is due at t0 + k / rate, the RPCs interleaved."""
    names = list(calls)
    total_rate = rate_per_rpc * len(names)
    count = int(total_rate * seconds)
    latencies: dict[str, list[float]] = {n: [] for n in names}
    errors: dict[str, int] = dict.fromkeys(names, 0)
    tasks: list[asyncio.Task[None]] = []

    async def one(name: str, k: int) -> None:
        started = time.perf_counter()
        try:
            await calls[name](k)
        except Exception:
            errors[name] += 1
            return
        latencies[name].append(time.perf_counter() - started)

    t0 = time.perf_counter() + 0.05
    for k in range(count):
        delay = t0 + k / total_rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(names[k % len(names)], k)))
    await asyncio.gather(*tasks)
    if any(errors.values()):
        raise RuntimeError(f"RPC errors during the measurement: {errors}")
    return latencies


async def run(env: BenchEnv) -> Result:
    import asyncpg
    from zaptrix import grpcauth
    from zaptrix.v1 import mapper_pb2 as pb
    from zaptrix.v1 import mapper_pb2_grpc

    sizes = [max(1_000, int(s * env.scale)) for s in SIZES]
    seconds = env.seconds(SECONDS, 5)
    res = Result(
        NAME,
        measured=f"mapper lookups over mTLS at {RATE_PER_RPC:g}/s per RPC with "
        + ", ".join(f"{s:,}" for s in sizes)
        + " conversations in PostgreSQL",
        target="p99 flat as the tables grow (index scans only)",
    )
    per_size: list[dict[str, Any]] = []
    seeding: list[dict[str, Any]] = []
    plans: dict[str, dict[str, Any]] = {}
    cpu_us: dict[int, float] = {}
    async with system(env, NAME, only={"mapper"}, seed=False) as sut:
        conn = await asyncpg.connect(sut.local.database_url)
        try:
            await conn.execute(SEED_CHANNELS)
            bitrix_dispatcher = sut.local.grpc_channel("mapper", grpcauth.BITRIX_DISPATCHER)
            meta_dispatcher = sut.local.grpc_channel("mapper", grpcauth.META_DISPATCHER)
            inbound = mapper_pb2_grpc.MapperStub(bitrix_dispatcher)
            outbound = mapper_pb2_grpc.MapperStub(meta_dispatcher)
            run_id = uuid.uuid4().hex[:8]
            seeded = 0
            try:
                for size in sizes:
                    print(f"  seeding {seeded:,} → {size:,} conversations", flush=True)
                    took = await seed(sut.local.database_url, seeded, size)
                    seeding.append({"from": seeded, "to": size} | took)
                    print(f"  seeded in {took['total_s']} s", flush=True)
                    seeded = size
                    rng = random.Random(size)

                    async def customer(_: int, n: int = size, rnd: random.Random = rng) -> None:
                        i = rnd.randrange(n)
                        await inbound.GetOrCreateConversation(
                            pb.GetOrCreateConversationRequest(
                                phone_number_id=pnid(i % CHANNELS),
                                wa_id=wa_id(i),
                                contact_name=f"Customer {i}",
                            ),
                            timeout=5,
                        )

                    async def new_event(k: int, n: int = size) -> None:
                        await inbound.CheckProcessed(
                            pb.CheckProcessedRequest(event_id=f"wa:wamid.NEW{run_id}{n}x{k}"), timeout=5
                        )

                    async def seen_event(_: int, n: int = size, rnd: random.Random = rng) -> None:
                        j = rnd.randrange(n * PROCESSED_PER_CONVERSATION)
                        await inbound.CheckProcessed(
                            pb.CheckProcessedRequest(event_id=event_id(j)), timeout=5
                        )

                    async def by_chat(_: int, n: int = size, rnd: random.Random = rng) -> None:
                        i = rnd.randrange(n)
                        await outbound.FindConversation(
                            pb.FindConversationRequest(
                                portal_external_chat=pb.PortalExternalChat(
                                    member_id=member(i % CHANNELS), external_chat_id=external_chat_id(i)
                                )
                            ),
                            timeout=5,
                        )

                    calls: dict[str, Callable[[int], Awaitable[Any]]] = {
                        "GetOrCreateConversation (existing)": customer,
                        "CheckProcessed (new event)": new_event,
                        "CheckProcessed (processed event)": seen_event,
                        "FindConversation (portal, external chat)": by_chat,
                    }
                    await measure(calls, RATE_PER_RPC, WARMUP_S)  # connections, plan caches
                    monitor = ProcessMonitor(sut.pids() | stack_pids(env))
                    metrics = sut.client("mapper_metrics")
                    scraped = await scrape(metrics, "/metrics")
                    monitor.start()
                    lat = await measure(calls, RATE_PER_RPC, seconds)
                    await monitor.stop()
                    server = server_times(scraped, await scrape(metrics, "/metrics"))
                    stmts = await statement_times(
                        conn, size, max(50, int(STATEMENT_SAMPLES * min(env.scale, 1)))
                    )
                    n_calls = sum(len(v) for v in lat.values())
                    cpu_us[size] = round(1e6 * monitor.cpu_seconds("mapper") / max(n_calls, 1), 1)
                    row: dict[str, Any] = {
                        "conversations": size,
                        "processed_events": size * PROCESSED_PER_CONVERSATION,
                        "rpcs": {n: latency_summary_ms(v) for n, v in lat.items()},
                        "statements": stmts,
                        "server": server,
                        "mapper_cpu_us_per_call": cpu_us[size],
                        "processes": monitor.report(),
                    }
                    per_size.append(row)
                    print(
                        f"  {size:,}: "
                        + "; ".join(f"{n} p99 {s['p99_ms']} ms" for n, s in row["rpcs"].items())
                        + f"; mapper {cpu_us[size]} µs CPU/call; server mean "
                        + ", ".join(f"{m} {v['mean_ms']}" for m, v in server.items())
                        + " ms; SQL p99 "
                        + ", ".join(f"{s['p99_ms']}" for s in stmts.values())
                        + " ms",
                        flush=True,
                    )
                plans = await explain(conn, sizes[-1])
                sizes_mb = await conn.fetchrow(
                    "SELECT pg_total_relation_size('mapper.conversation_mapping') AS conv,"
                    " pg_total_relation_size('mapper.processed_event') AS processed"
                )
            finally:
                await bitrix_dispatcher.close()
                await meta_dispatcher.close()
        finally:
            await conn.close()

    names = list(per_size[0]["rpcs"])
    curves = {n: [(r["conversations"], float(r["rpcs"][n]["p99_ms"] or 0)) for r in per_size] for n in names}
    sql_curves = {
        n: [(r["conversations"], float(r["statements"][n]["p99_ms"] or 0)) for r in per_size]
        for n in per_size[0]["statements"]
    }
    growth = {n: round(pts[-1][1] / pts[0][1], 2) if pts[0][1] else None for n, pts in curves.items()}
    seq_scans = [n for n, p in plans.items() if p["seq_scan"]]
    # Judged on what the table size can change: the statement's own work (buffers per call: one more
    # b-tree level per ~100x is expected, for each index the statement looks up; p50 time within
    # 2x + 0.05 ms), the mapper's CPU per call
    # (within 1.5x) and the plans (no Seq Scan).
    # The client-side RPC p99 is reported, not judged: on this shared box it is mostly CPU contention.
    first_stmts, last_stmts = per_size[0]["statements"], per_size[-1]["statements"]

    def buffers(st: dict[str, Any]) -> float:
        return float(st["buffers_hit_per_call"]) + float(st["buffers_read_per_call"])

    def index_scans(n: str) -> int:  # each index of a statement may grow a b-tree level from 10k to 1M
        return max(1, sum("Index Scan" in line or "Index Only Scan" in line for line in plans[n]["plan"]))

    # p50 and buffers: a single descheduled backend on this shared box moves a p99 of 300 samples.
    flat_sql = all(
        buffers(last_stmts[n]) <= buffers(first_stmts[n]) + 2 * index_scans(n)
        and float(last_stmts[n]["p50_ms"]) <= 2 * float(first_stmts[n]["p50_ms"]) + 0.05
        for n in first_stmts
    )
    flat_cpu = cpu_us[sizes[-1]] <= 1.5 * cpu_us[sizes[0]]
    res.verdict = verdict(flat_sql and flat_cpu and not seq_scans)
    at = " / ".join(f"{s:,}" for s in sizes)
    res.figure = (
        f"RPC p99 (client, ms) at {at}: "
        + "; ".join(f"{n} " + " / ".join(f"{y:.1f}" for _, y in pts) for n, pts in curves.items())
        + "; mapper-side mean / p99 bucket (ms): "
        + "; ".join(
            f"{m} "
            + " / ".join(
                f"{r['server'].get(m, {}).get('mean_ms')} (p99 ≤ {r['server'].get(m, {}).get('p99_le_ms')})"
                for r in per_size
            )
            for m in per_size[-1]["server"]
        )
        + "; SQL statement p99 (ms): "
        + "; ".join(f"{n} " + " / ".join(f"{y:.3f}" for _, y in pts) for n, pts in sql_curves.items())
        + "; buffers/call "
        + "; ".join(
            f"{n} " + " / ".join(f"{buffers(r['statements'][n]):g}" for r in per_size) for n in first_stmts
        )
        + "; mapper CPU/call "
        + " / ".join(f"{cpu_us[s]:.0f}" for s in sizes)
        + f" µs; plans at {sizes[-1]:,}: "
        + ("Seq Scan in " + ", ".join(seq_scans) if seq_scans else "index scans only")
    )
    res.baseline = "RPC p50 (ms): " + "; ".join(
        f"{n} " + " / ".join(f"{r['rpcs'][n]['p50_ms']:.1f}" for r in per_size) for n in names
    )
    res.details = {
        "sizes": sizes,
        "portals": PORTALS,
        "channels": CHANNELS,
        "processed_per_conversation": PROCESSED_PER_CONVERSATION,
        "rate_per_rpc_per_s": RATE_PER_RPC,
        "seconds_per_size": seconds,
        "seeding": seeding,
        "per_size": per_size,
        "p99_curves_ms": curves,
        "sql_p99_curves_ms": sql_curves,
        "p99_growth_largest_over_smallest": growth,
        "explain_at_largest": plans,
        "table_bytes_at_largest": dict(sizes_mb) if sizes_mb else {},
    }
    res.processes = per_size[-1]["processes"]
    res.notes.append(
        "seeding (SQL, generate_series): "
        + "; ".join(f"{s['from']:,}→{s['to']:,} in {s['total_s']} s" for s in seeding)
    )
    res.notes.append(
        f"tables at {sizes[-1]:,}: conversation_mapping {dict(sizes_mb or {}).get('conv', 0) / 2**20:.0f} MiB, "
        f"processed_event {dict(sizes_mb or {}).get('processed', 0) / 2**20:.0f} MiB (with indexes)"
    )
    for n, p in plans.items():
        res.notes.append(f"plan {n}: " + " | ".join(line.strip() for line in p["plan"][:2]))
    pngs = save(res.to_json(), NAME, env.results / "plots")
    res.details["plots"] = pngs
    res.notes.append(
        f"plot: {', '.join(pngs)}" if pngs else "plot: matplotlib not installed (curves are in the JSON)"
    )
    return res
