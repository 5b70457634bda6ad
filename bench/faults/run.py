"""`python -m bench.faults [SCENARIO ...]`, through dev/faults.sh (`make faults`), which starts the suite's
own PostgreSQL and Kafka (the Kafka and PostgreSQL scenarios kill them) and exports BENCH_PG_URL,
BENCH_KAFKA, BENCH_STATE and FAULTS_STACK_STATE.

Starts the whole system once (dev/localsystem.py: the processes of `make run`, the stand-ins with status
webhooks on), seeds two portals and two numbers with many customers, then runs each scenario on it: steady
load on both flows, the fault, the drain, the count. Prints a table and writes bench/results/faults.json.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import secrets
import signal
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from bench.common import BenchEnv, kill_remembered, system
from bench.faults import inject
from bench.faults.scenarios import BY_ID, SCENARIOS, Config, Context, Outcome, run_scenario
from bench.faults.world import add_second_tenant, configure_stand_ins, open_customers, tenants
from bench.run import machine

COLUMNS = [
    ("scenario", 22),
    ("sent", 6),
    ("delivered", 9),
    ("lost", 5),
    ("lost seen", 9),
    ("dup", 4),
    ("explained", 9),
    ("unexpl.", 7),
    ("drain s", 7),
    ("fault s", 7),
]


def table(rows: list[dict[str, Any]]) -> str:
    def cells(r: dict[str, Any]) -> list[str]:
        return [
            r["id"],
            str(r["sent"]),
            str(r["delivered"]),
            str(r["lost"]),
            str(r["lost_visible_to_operator"]),
            str(r["duplicated"]),
            str(r["explained_duplicates"]),
            str(r["unexplained_duplicates"]),
            "-" if r["drain_s"] is None else f"{r['drain_s']:.1f}",
            "-" if r["fault_length_s"] is None else f"{r['fault_length_s']:.1f}",
        ]

    width = sum(w + 2 for _, w in COLUMNS)
    out = ["=" * width, "  ".join(f"{n:<{w}}" if i == 0 else f"{n:>{w}}" for i, (n, w) in enumerate(COLUMNS))]
    out.append("-" * width)
    for r in rows:
        vals = cells(r)
        out.append(
            "  ".join(
                f"{v:<{w}}" if i == 0 else f"{v:>{w}}"
                for i, (v, (_, w)) in enumerate(zip(vals, COLUMNS, strict=True))
            )
        )
        for flow, label in (("customer_messages", "customer"), ("operator_replies", "operator")):
            f = r[flow]
            parts = [f"{label}: {f['delivered']}/{f['sent']}"]
            parts += [f"lost {n}: {why}" for why, n in f["lost_detail"].items()]
            parts += [f"answered {a}: {n}" for a, n in f["lost_answers"].items()]
            parts += [f"dup {n}: {w}" for w, n in f["windows"].items()]
            if len(parts) > 1:
                out.append("    " + "; ".join(parts))
        if r["error"]:
            out.append(f"    ERROR {r['error'][:300]}")
        for note in r["notes"]:
            out.append(f"    note: {note[:300]}")
    out.append("=" * width)
    return "\n".join(out)


def print_tasks() -> None:
    for task in asyncio.all_tasks():
        task.print_stack(file=sys.stderr)


def print_outcome(o: Outcome) -> None:
    r = o.row()
    print(
        f"  {r['id']}: sent {r['sent']}, delivered {r['delivered']}, lost {r['lost']} "
        f"(seen by the operator {r['lost_visible_to_operator']}), duplicated {r['duplicated']} "
        f"(explained {r['explained_duplicates']}), drain {r['drain_s']} s, {r['duration_s']} s",
        flush=True,
    )


async def main_async(args: argparse.Namespace, cfg: Config, names: list[str]) -> int:
    # `kill -USR1 <pid>` prints where every task of the suite waits (a scenario that seems stuck).
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, print_tasks)
    env = BenchEnv.from_environ()
    stack = inject.Stack.from_environ()
    results = Path(args.results)
    run_tag = secrets.token_hex(2)
    info = machine()
    print(f"machine: {info.get('cpus')} CPUs, load average {info.get('load_average_at_start')}", flush=True)
    outcomes: list[Outcome] = []
    started = time.time()
    async with system(env, "faults") as sut:
        graph, bitrix = sut.client("graph"), sut.client("bitrix")
        await configure_stand_ins(graph)
        await add_second_tenant(sut.local, graph, bitrix)
        print(f"  opening {2 * args.customers} conversations …", flush=True)
        customers = await open_customers(graph, bitrix, args.customers, two=True)
        ctx = Context(sut.local, graph, bitrix, customers, [m for _, m in tenants(True)], stack)
        for i, name in enumerate(names):
            scenario = BY_ID[name]
            if scenario.needs_stack and stack is None:
                print(
                    f"--- {name}: skipped (needs `make faults`, which owns PostgreSQL and Kafka)", flush=True
                )
                continue
            print(f"--- {name}: {scenario.component}, {scenario.fault}", flush=True)
            outcome = await run_scenario(ctx, scenario, cfg, f"F{run_tag}s{i:02d}")
            outcomes.append(outcome)
            print_outcome(outcome)
            write(results, info, cfg, outcomes, started)
    rows = [o.row() for o in outcomes]
    print(table(rows))
    total_c = sum(r["customer_messages"]["sent"] for r in rows)
    total_o = sum(r["operator_replies"]["sent"] for r in rows)
    print(f"{total_c} customer messages and {total_o} operator replies in {time.time() - started:.0f} s")
    print(f"results: {results / 'faults.json'}")
    return 0 if all(r["error"] is None for r in rows) else 1


def write(results: Path, info: dict[str, Any], cfg: Config, outcomes: list[Outcome], started: float) -> None:
    results.mkdir(parents=True, exist_ok=True)
    body = {
        "machine": info,
        "started_at": started,
        "written_at": time.time(),
        "config": asdict(cfg),
        "scenarios": [o.row() for o in outcomes],
    }
    (results / "faults.json").write_text(json.dumps(body, indent=2, default=str) + "\n")


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, Config, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenarios", nargs="*", help=f"any of: {', '.join(BY_ID)} (default: all)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--customers", type=int, default=100, help="customers per number (default 100)")
    parser.add_argument(
        "--results",
        default=str(Path(__file__).resolve().parents[1] / "results"),
        help="where faults.json goes",
    )
    defaults = Config()
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(flag, type=type(getattr(defaults, f.name)), default=getattr(defaults, f.name))
    args = parser.parse_args(argv)
    cfg = Config(**{f.name: getattr(args, f.name) for f in fields(Config)})
    names = [n for a in args.scenarios for n in a.replace(",", " ").split()] or [s.id for s in SCENARIOS]
    unknown = [n for n in names if n not in BY_ID]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(BY_ID)}")
    return args, cfg, names


def main() -> None:
    args, cfg, names = parse()
    if args.list:
        for s in SCENARIOS:
            print(f"{s.id:<22} {s.component}: {s.fault}")
        return
    atexit.register(kill_remembered)
    try:
        import uvloop

        code = uvloop.run(main_async(args, cfg, names))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted: stopped every process the suite started", file=sys.stderr)
        code = 130
    finally:
        kill_remembered()
    sys.exit(code)
