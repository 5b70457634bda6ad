"""Benchmark driver: `python -m bench.run [SCENARIO ...]` (through dev/bench.sh, which starts the bench's
own PostgreSQL and Kafka and exports BENCH_PG_URL / BENCH_KAFKA / BENCH_STATE).

Runs the scenarios one after another, each on a fresh system (own database, topics and ports), prints a
table and writes bench/results/<scenario>.json plus bench/results/summary.json. Every scenario has a
hard time limit; Ctrl-C or SIGTERM stops the current scenario and every process it started.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import importlib
import json
import os
import platform
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench.common import BenchEnv, kill_remembered
from bench.result import RSS_GOAL_MIB, Result, is_ours, memory, memory_cell

# name -> (module, time limit in seconds at BENCH_SCALE=1)
SCENARIOS: dict[str, tuple[str, float]] = {
    "ingress": ("bench.scenarios.ingress", 180),
    "inbound_e2e": ("bench.scenarios.inbound_e2e", 150),
    "portal_rate": ("bench.scenarios.portal_rate", 180),
    "outbound_throughput": ("bench.scenarios.outbound_throughput", 180),
    "outbound_latency": ("bench.scenarios.outbound_latency", 120),
    "adversarial": ("bench.scenarios.adversarial", 120),
    # how cost grows (issue 14)
    "scaling": ("bench.scenarios.scaling", 300),
    "replicas": ("bench.scenarios.replicas", 240),
    "mapper_lookup": ("bench.scenarios.mapper_lookup", 240),
    "backlog_drain": ("bench.scenarios.backlog_drain", 420),
}
IN_PROCESS = frozenset({"adversarial"})  # need no PostgreSQL or Kafka: runnable without dev/bench.sh


def _load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": _load_average(),
    }
    try:
        with open("/proc/meminfo") as fh:
            info["mem_total_gb"] = round(int(fh.readline().split()[1]) / 1024 / 1024, 1)
        with open("/proc/cpuinfo") as fh:
            info["cpu_model"] = next(
                (ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), ""
            )
    except OSError:
        pass
    return info


async def run_one(name: str, env: BenchEnv) -> Result:
    module_name, limit = SCENARIOS[name]
    started = time.time()
    load_before = _load_average()
    try:
        module = importlib.import_module(module_name)
        result: Result = await asyncio.wait_for(module.run(env), timeout=limit * max(env.scale, 0.5) + 60)
    except TimeoutError:
        result = Result(
            name, measured="-", target="-", verdict="error", error=f"time limit of {limit}s exceeded"
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a broken scenario must not stop the others
        result = Result(name, measured="-", target="-", verdict="error", error=f"{type(exc).__name__}: {exc}")
        result.details["traceback"] = traceback.format_exc()
    result.started_at = started
    result.duration_s = round(time.time() - started, 1)
    result.details.setdefault("load_average_before", load_before)
    result.details.setdefault("load_average_after", _load_average())
    return result


def _wrap(text: str, width: int) -> list[str]:
    words, lines, cur = text.split(), [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > width:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}" if cur else w
    return [*lines, cur] if cur else lines or [""]


def print_result(r: Result) -> None:
    mark = {"pass": "PASS", "short": "SHORT", "error": "ERROR"}.get(r.verdict, r.verdict)
    print(f"\n=== {r.scenario}: {mark}  ({r.duration_s:.0f} s)")
    print(f"  measured : {r.measured}")
    print(f"  target   : {r.target}")
    for i, line in enumerate(_wrap(r.figure, 100)):
        print(f"  {'figure' if i == 0 else '':<9}: {line}" if i == 0 else f"             {line}")
    if r.baseline and r.baseline != "-":
        for i, line in enumerate(_wrap(r.baseline, 100)):
            print(f"  baseline : {line}" if i == 0 else f"             {line}")
    if r.error:
        print(f"  error    : {r.error[:3000]}")
    for note in r.notes:
        for i, line in enumerate(_wrap(note, 100)):
            print(f"  note     : {line}" if i == 0 else f"             {line}")
    if r.processes:
        print(f"  {'process':<28} {'RSS max MB':>10} {'RSS end MB':>10} {'CPU % max':>10}")
        for p in r.processes:
            cpu = p.get("cpu_pct_max", p.get("cpu_pct", ""))
            print(f"  {p['process']:<28} {p['rss_mb_max']:>10} {p['rss_mb_end']:>10} {cpu!s:>10}")


def print_table(results: list[Result]) -> None:
    print("\n" + "=" * 140)
    print(
        f"{'scenario':<20} {'verdict':<7} {'target':<38} {'figure':<50} max RSS (goal < {RSS_GOAL_MIB:g} MiB)"
    )
    print("-" * 140)
    for r in results:
        target_lines = _wrap(r.target, 38)
        text = (r.error or "").splitlines()[0][:300] if r.error else r.figure
        fig_lines = _wrap(text, 50)
        mem_lines = _wrap(memory_cell(memory(r.processes)), 20)
        for i in range(max(len(target_lines), len(fig_lines), len(mem_lines))):
            t = target_lines[i] if i < len(target_lines) else ""
            f = fig_lines[i] if i < len(fig_lines) else ""
            m = mem_lines[i] if i < len(mem_lines) else ""
            head = f"{r.scenario:<20} {r.verdict:<7} " if i == 0 else " " * 29
            print(f"{head}{t:<38} {f:<50} {m}")
    print("=" * 140)


async def main_async(names: list[str], env: BenchEnv) -> int:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    interrupts = 0

    def stop() -> None:
        # First signal: cancel the running scenario (its finally blocks stop every process it started).
        # Second: kill what is left at once.
        nonlocal interrupts
        interrupts += 1
        print(
            f"\n{'stopping' if interrupts == 1 else 'killing'} the benchmark's processes …", file=sys.stderr
        )
        if interrupts > 1:
            kill_remembered()
        task.cancel()

    # Installed explicitly: a parent may have left SIGINT ignored (background jobs of a script do).
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    results: list[Result] = []
    summary_path = env.results / "summary.json"
    info = machine() | {"bench_scale": env.scale}
    print(f"machine: {info.get('cpus')} CPUs, load average {info.get('load_average_at_start')}", flush=True)
    try:
        for name in names:
            print(f"\n--- {name}", flush=True)
            result = await run_one(name, env)
            results.append(result)
            path = result.write(env.results)
            print_result(result)
            print(
                f"  → {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}", flush=True
            )
    finally:
        if results:
            previous: dict[str, Any] = {}
            if summary_path.exists():
                try:
                    previous = json.loads(summary_path.read_text()).get("scenarios", {})
                except (OSError, ValueError):
                    previous = {}
            merged = {
                **previous,
                **{
                    r.scenario: {k: v for k, v in r.to_json().items() if k not in ("details",)}
                    | {"memory": memory(r.processes)}
                    for r in results
                },
            }
            summary = {
                "machine": info,
                "written_at": time.time(),
                "scenarios": merged,
                "memory": memory_summary(merged),
            }
            env.results.mkdir(parents=True, exist_ok=True)
            summary_path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
            draw_plots(env, [r.scenario for r in results])
    print_table(results)
    print(f"results: {env.results}/<scenario>.json, {summary_path}")
    return 0 if all(r.verdict != "error" for r in results) else 1


def memory_summary(scenarios: dict[str, Any]) -> dict[str, Any]:
    """Max RSS per process over every scenario of the summary, against the goal (ours judged, the
    stand-ins, Kafka and PostgreSQL listed)."""
    top: dict[str, dict[str, Any]] = {}
    for name, r in scenarios.items():
        for p in r.get("processes") or []:
            mb = float(p.get("rss_mb_max") or 0)
            if mb > top.get(p["process"], {}).get("max_mib", 0.0):
                top[p["process"]] = {"max_mib": mb, "scenario": name, "judged": is_ours(p["process"])}
    return {
        "goal_mib": RSS_GOAL_MIB,
        "within_goal": all(v["max_mib"] < RSS_GOAL_MIB for v in top.values() if v["judged"]),
        "max_by_process": dict(sorted(top.items(), key=lambda kv: -kv[1]["max_mib"])),
    }


def draw_plots(env: BenchEnv, scenarios: list[str]) -> None:
    """Redraws the curves of the scenarios just run (and the memory chart) into docs/benchmarks/."""
    try:
        from bench import plots

        for path in plots.draw(env.results, only=[*scenarios, "summary"]):
            print(f"plot: {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    except Exception as exc:  # plotting never fails a run
        print(f"plots not drawn: {type(exc).__name__}: {exc}", file=sys.stderr)


def markdown(summary: dict[str, Any]) -> str:
    """The latest verdicts as a Markdown table (docs/benchmarks.md)."""
    rows = [
        f"| scenario | target | figure | same-run baseline | verdict | max RSS (goal < {RSS_GOAL_MIB:g} MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for name in SCENARIOS:
        r = summary.get("scenarios", {}).get(name)
        if r is None:
            continue
        cells = [
            name,
            r["target"],
            r.get("error") or r["figure"],
            r.get("baseline") or "-",
            f"**{r['verdict']}**",
            memory_cell(r.get("memory") or memory(r.get("processes") or [])),
        ]
        rows.append("| " + " | ".join(str(c).replace("|", "/").replace("\n", " ") for c in cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenarios", nargs="*", help=f"any of: {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="print bench/results/summary.json as a Markdown table and exit",
    )
    args = parser.parse_args()
    if args.list:
        for name in SCENARIOS:
            print(name)
        return
    if args.markdown:
        results = Path(os.environ.get("BENCH_RESULTS", Path(__file__).resolve().parent / "results"))
        print(markdown(json.loads((results / "summary.json").read_text())))
        return
    names = [n for arg in args.scenarios for n in arg.replace(",", " ").split()] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    env = BenchEnv.from_environ(need_stack=not set(names) <= IN_PROCESS)
    atexit.register(kill_remembered)
    try:
        import uvloop

        code = uvloop.run(main_async(names, env))
    except KeyboardInterrupt:
        print("\ninterrupted: stopped every process the benchmark started", file=sys.stderr)
        code = 130
    except asyncio.CancelledError:
        print("\ninterrupted: stopped every process the benchmark started", file=sys.stderr)
        code = 130
    finally:
        kill_remembered()
    sys.exit(code)


if __name__ == "__main__":
    main()
