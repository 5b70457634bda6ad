"""The benchmark curves as PNGs for docs/benchmarks.md, drawn with matplotlib from the JSON results.

    python -m bench.plots                 # every curve from bench/results/*.json into docs/benchmarks/
    python -m bench.plots scaling         # only the curves of these scenarios (or "summary")

bench/run.py calls draw() at the end of a run for the scenarios it ran. A curve is a function from one
scenario's JSON (``bench/results/<scenario>.json``; "summary" is summary.json) to a Figure, registered
with ``@curve("<file>.png", "<scenario>")``; it returns None when the JSON lacks its data (an older run),
and that PNG is left as it is. Non-interactive (Agg), ~100 dpi: the PNGs are committed, so they stay small.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bench.result import RSS_GOAL_MIB, is_ours

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs" / "benchmarks"
DPI = 100

PlotFn = Callable[[dict[str, Any]], Figure | None]


@dataclass(frozen=True)
class Curve:
    png: str
    source: str  # the scenario whose JSON it reads, or "summary"
    draw: PlotFn


CURVES: list[Curve] = []


def curve(png: str, source: str) -> Callable[[PlotFn], PlotFn]:
    """Registers a curve: ``@curve("scaling-portals.png", "scaling")`` over ``def f(result) -> Figure``."""

    def register(fn: PlotFn) -> PlotFn:
        CURVES.append(Curve(png, source, fn))
        return fn

    return register


# ---- building blocks ------------------------------------------------------------------------------------


def figure(width: float = 8.0, height: float = 4.0) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots()


def when(result: dict[str, Any]) -> str:
    import time

    at = result.get("started_at")
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(float(at))) if at else ""


def values(points: Sequence[dict[str, Any]], key: str) -> list[float]:
    """points[i][key] as floats, NaN where missing (matplotlib leaves a gap)."""
    return [float(p[key]) if p.get(key) is not None else math.nan for p in points]


def rolling_percentile(
    xs: Sequence[float], ys: Sequence[float], q: float, window: float, step: float
) -> tuple[list[float], list[float]]:
    """q-th percentile (nearest rank) of the ys whose x lies in [c - window/2, c + window/2], every `step`
    along x (xs sorted ascending). Windows with no point are skipped."""
    import bisect

    out_x: list[float] = []
    out_y: list[float] = []
    if not xs:
        return out_x, out_y
    c = xs[0]
    while c <= xs[-1] + step / 2:
        lo = bisect.bisect_left(xs, c - window / 2)
        hi = bisect.bisect_right(xs, c + window / 2)
        if hi > lo:
            part = sorted(ys[lo:hi])
            k = max(0, min(len(part) - 1, math.ceil(q / 100 * len(part)) - 1))
            out_x.append(c)
            out_y.append(part[k])
        c += step
    return out_x, out_y


def latency_over_time(result: dict[str, Any], title: str, target_ms: float | None) -> Figure | None:
    """Each message's latency against its send time (dots) and the rolling p99 (1 s window): a burst
    shows as a spike that comes back down, a backlog as a ramp for as long as the load lasts."""
    series = result.get("details", {}).get("latency_series")
    if not series or not series.get("send_s"):
        return None
    xs, ys = list(series["send_s"]), list(series["latency_ms"])
    fig, ax = figure()
    ax.scatter(xs, ys, s=4, alpha=0.35, color="tab:blue", linewidths=0, label="one message")
    rx, ry = rolling_percentile(xs, ys, 99, window=1.0, step=0.25)
    ax.plot(rx, ry, color="tab:red", linewidth=1.5, label="p99, rolling 1 s")
    if target_ms is not None:
        ax.axhline(target_ms, color="grey", linestyle="--", linewidth=1, label=f"goal p99 {target_ms:g} ms")
    if ys and min(ys) > 0 and max(ys) / min(ys) > 50:
        ax.set_yscale("log")
    ax.set_xlabel("send time (s since the first message)")
    ax.set_ylabel("latency (ms)")
    p99 = result.get("details", {}).get("latency_ms", {}).get("p99_ms")
    ax.set_title(f"{title}: p99 {p99} ms over {len(ys)} messages ({when(result)})", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return fig


# Parts of the CPU per message drawn beside the total, when a point has them.
SHARES = (
    ("dispatcher_cpu_us_per_msg", "of which bitrix-dispatcher", "tab:cyan"),
    ("mapper_cpu_us_per_msg", "of which mapper", "tab:purple"),
)


def cost_curve(
    points: Sequence[dict[str, Any]], x_key: str, x_label: str, title: str, log_x: bool = True
) -> Figure | None:
    """CPU per message (left axis, summed over the services' processes) and p99 latency (right axis)
    against the number of something (x)."""
    pts = [p for p in points if p.get(x_key) is not None]
    if not pts:
        return None
    xs = [float(p[x_key]) for p in pts]
    fig, ax = figure()
    ax.plot(
        xs,
        values(pts, "cpu_us_per_msg"),
        marker="o",
        color="tab:blue",
        label="CPU per message (all services)",
    )
    for key, label, color in SHARES:
        if any(p.get(key) is not None for p in pts):
            ax.plot(xs, values(pts, key), marker="s", color=color, linestyle=":", label=label)
    ax.set_ylabel("CPU per message (µs)")
    ax.set_ylim(bottom=0)
    ax.set_xlabel(x_label)
    if log_x:
        ax.set_xscale("log")
    ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax2 = ax.twinx()
    ax2.plot(xs, values(pts, "p99_ms"), marker="^", color="tab:red", label="p99 latency")
    ax2.set_ylabel("p99 latency (ms)")
    ax2.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    fig.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="outside lower center", ncols=3, fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=10)
    return fig


# ---- the curves -----------------------------------------------------------------------------------------


@curve("inbound_e2e-latency-over-time.png", "inbound_e2e")
def inbound_latency(result: dict[str, Any]) -> Figure | None:
    return latency_over_time(result, "inbound_e2e (webhook → Bitrix24 stand-in)", 100.0)


@curve("outbound_latency-latency-over-time.png", "outbound_latency")
def outbound_latency(result: dict[str, Any]) -> Figure | None:
    return latency_over_time(result, "outbound_latency (Bitrix24 event → Graph stand-in)", 100.0)


def _scaling(result: dict[str, Any], axis: str, label: str) -> Figure | None:
    details = result.get("details", {})
    points = details.get("curves", {}).get(axis)
    if not points:
        return None
    rate = details.get("rate_per_s")
    return cost_curve(
        points,
        "n",
        label,
        f"inbound at {rate} msg/s: cost vs {label} ({when(result)})",
    )


@curve("scaling-portals.png", "scaling")
def scaling_portals(result: dict[str, Any]) -> Figure | None:
    return _scaling(result, "portals", "portals (one number each)")


@curve("scaling-numbers.png", "scaling")
def scaling_numbers(result: dict[str, Any]) -> Figure | None:
    return _scaling(result, "numbers", "WhatsApp numbers (one portal)")


@curve("replicas.png", "replicas")
def replicas(result: dict[str, Any]) -> Figure | None:
    """Measured drain rate with k dispatcher replicas on this box's shared CPU, against the projection
    with a core per replica (capped by the partitions), and CPU per message."""
    details = result.get("details", {})
    points = details.get("points") or []
    if not points:
        return None
    proj = details.get("projection", {})
    ks = [int(p["replicas"]) for p in points]
    fig, ax = figure()
    ax.plot(ks, values(points, "throughput_per_s"), marker="o", label="measured (2 shared cores)")
    parts = int(proj.get("partitions") or 0)
    curve_pts = proj.get("curve") or []
    if curve_pts:
        ax.plot(
            [int(c["replicas"]) for c in curve_pts],
            values(curve_pts, "per_s"),
            linestyle="--",
            marker=".",
            color="tab:green",
            label=f"projected: a core per replica, {parts} partitions",
        )
    goal = proj.get("ten_x_inbound_per_s")
    if goal:
        ax.axhline(
            float(goal), color="tab:orange", linestyle="-.", linewidth=1, label="10x today's inbound goal"
        )
    if parts:
        ax.axvline(parts, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("bitrix-dispatcher replicas (one consumer group)")
    ax.set_ylabel("messages/s")
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.plot(ks, values(points, "cpu_us_per_msg"), marker="s", color="tab:red", label="CPU per message")
    ax2.set_ylabel("CPU per message, all services (µs)")
    cpu_top = max((v for v in values(points, "cpu_us_per_msg") if not math.isnan(v)), default=0.0)
    ax2.set_ylim(0, cpu_top * 1.6 or None)  # below the projection's plateau, not on top of it
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    fig.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="outside lower center", ncols=3, fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"inbound drain with 1..k dispatcher replicas ({when(result)})", fontsize=10)
    return fig


def max_rss_by_process(summary: dict[str, Any]) -> dict[str, tuple[float, str]]:
    """process -> (highest RSS in MiB over every scenario of the summary, the scenario it was seen in)."""
    out: dict[str, tuple[float, str]] = {}
    for name, r in summary.get("scenarios", {}).items():
        for p in r.get("processes") or []:
            mb = float(p.get("rss_mb_max") or 0)
            if mb > out.get(p["process"], (0.0, ""))[0]:
                out[p["process"]] = (mb, name)
    return out


@curve("memory.png", "summary")
def memory(summary: dict[str, Any]) -> Figure | None:
    rss = max_rss_by_process(summary)
    if not rss:
        return None
    names = sorted(rss, key=lambda n: (not is_ours(n), -rss[n][0]))
    fig, ax = figure(8.0, 0.3 * len(names) + 1.2)
    colors = [
        ("tab:red" if rss[n][0] > RSS_GOAL_MIB else "tab:blue") if is_ours(n) else "lightgrey" for n in names
    ]
    ax.barh(names, [rss[n][0] for n in names], color=colors)
    for i, n in enumerate(names):
        ax.text(rss[n][0], i, f" {rss[n][0]:.0f} ({rss[n][1]})", va="center", fontsize=7)
    ax.axvline(RSS_GOAL_MIB, color="tab:red", linestyle="--", linewidth=1, label=f"goal {RSS_GOAL_MIB:g} MiB")
    ax.set_xlim(0, max(max(v[0] for v in rss.values()), RSS_GOAL_MIB) * 1.25)  # room for the labels
    ax.invert_yaxis()
    ax.set_xlabel("max RSS under load (MiB, VmRSS; PostgreSQL summed over its backends)")
    ax.tick_params(axis="y", labelsize=8)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("memory per process, highest over the scenarios (grey: not ours)", fontsize=10)
    return fig


# ---- driver ---------------------------------------------------------------------------------------------


def load(results: Path, source: str) -> dict[str, Any] | None:
    path = results / f"{source}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def draw(results: Path = RESULTS, out: Path = DOCS, only: Iterable[str] | None = None) -> list[Path]:
    """Every registered curve whose source JSON exists (only those of `only`, if given) as out/<png>.
    A curve that fails is reported and skipped: plotting must never fail a benchmark run."""
    from bench import lookup_drain_plots  # its curves register here (it imports this module lazily)

    lookup_drain_plots.register()
    wanted = set(only) if only is not None else None
    written: list[Path] = []
    for c in CURVES:
        if wanted is not None and c.source not in wanted:
            continue
        data = load(results, c.source)
        if data is None:
            continue
        try:
            fig = c.draw(data)
        except Exception as exc:
            print(f"plot {c.png}: {type(exc).__name__}: {exc}")
            continue
        if fig is None:
            continue
        out.mkdir(parents=True, exist_ok=True)
        path = out / c.png
        fig.savefig(path, dpi=DPI)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "sources", nargs="*", help="scenarios (or 'summary') whose curves to draw; default all"
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    for path in draw(args.results, args.out, args.sources or None):
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


if __name__ == "__main__":
    main()
