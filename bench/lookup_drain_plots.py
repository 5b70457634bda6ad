"""The curves of mapper_lookup and backlog_drain, drawn from their JSON results.

Each function takes a scenario's result (as written to bench/results/<scenario>.json) and returns a
matplotlib Figure, or None when the JSON lacks the data. matplotlib is imported at call time: without it
(or without bench.plots) the scenarios still run and keep their series in the JSON. When bench.plots
exists, register() adds these curves to its registry, so its draw() writes them to docs/benchmarks/ with
the others.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

MAPPER_LOOKUP_PNG = "mapper_lookup.png"
BACKLOG_DRAIN_PNG = "backlog_drain.png"


def _figure_class() -> Any | None:
    try:
        return importlib.import_module("matplotlib.figure").Figure
    except ImportError:
        return None


def mapper_lookup_figure(result: dict[str, Any]) -> Any | None:
    """gRPC p99 (client side) and the statement's own p99 (EXPLAIN ANALYZE) against conversations."""
    details = result.get("details", {})
    rows = details.get("per_size") or []
    figure = _figure_class()
    if not rows or figure is None:
        return None
    fig = figure(figsize=(9.0, 4.2), layout="constrained")
    grpc_ax, sql_ax = fig.subplots(1, 2)
    xs = [int(r["conversations"]) for r in rows]

    def color(name: str) -> str:  # the same call in the same colour in both panels
        for key, c in (
            ("GetOrCreate", "tab:blue"),
            ("processed event", "tab:green"),
            ("Check", "tab:orange"),
        ):
            if key in name:
                return c
        return "tab:red"

    for name in rows[0]["rpcs"]:
        c = color(name)
        grpc_ax.plot(xs, [r["rpcs"][name]["p99_ms"] for r in rows], marker="o", color=c, label=f"{name} p99")
        grpc_ax.plot(xs, [r["rpcs"][name]["p50_ms"] for r in rows], linestyle=":", marker=".", color=c)
    for name in rows[0].get("statements") or {}:
        c = color(name)
        sql_ax.plot(
            xs, [r["statements"][name]["p99_ms"] for r in rows], marker="o", color=c, label=f"{name} p99"
        )
        sql_ax.plot(xs, [r["statements"][name]["p50_ms"] for r in rows], linestyle=":", marker=".", color=c)
    panels = (
        (grpc_ax, "RPC over mTLS, client side (ms; dotted: p50)"),
        (sql_ax, "the SQL statement in PostgreSQL (ms; dotted: p50)"),
    )
    for ax, title in panels:
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:,}" for x in xs])
        ax.set_xlabel("conversations in PostgreSQL")
        ax.set_ylim(bottom=0)
        ax.set_title(title, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle("mapper lookups vs table size", fontsize=10)
    return fig


def backlog_drain_figure(result: dict[str, Any]) -> Any | None:
    """Delivered/s and the consumer lag over time (top); requests/s per portal against the limit (bottom)."""
    d = result.get("details", {})
    delivered = d.get("delivered_per_second") or []
    figure = _figure_class()
    if not delivered or figure is None:
        return None
    fig = figure(figsize=(8.0, 5.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot([i + 0.5 for i in range(len(delivered))], delivered, color="tab:blue", label="delivered msg/s")
    bound = float(d.get("platform_bound_per_s") or 0)
    ceiling = max([*delivered, 1]) * 1.3
    if bound and bound <= ceiling:
        top.axhline(bound, color="grey", linestyle="--", linewidth=1, label=f"Bitrix24 bound {bound:,.0f}/s")
    top.set_ylabel("messages delivered / s")
    top.set_ylim(bottom=0, top=ceiling)
    lag = [(r["t"], r["consumer_lag"]) for r in d.get("consumer_lag_per_second") or [] if "consumer_lag" in r]
    lag_ax = top.twinx()
    lag_ax.plot([t for t, _ in lag], [v for _, v in lag], color="tab:red", linewidth=1, label="consumer lag")
    lag_ax.set_ylabel("records behind")
    lag_ax.set_ylim(bottom=0)
    lines, labels = top.get_legend_handles_labels()
    lines2, labels2 = lag_ax.get_legend_handles_labels()
    top.legend(lines + lines2, labels + labels2, fontsize=7, loc="upper right")
    top.grid(True, alpha=0.3)
    portals = int(d.get("portals") or 1)
    reqs = d.get("requests_per_second_all_portals") or []
    bottom.plot(
        [i + 0.5 for i in range(len(reqs))],
        [n / portals for n in reqs],
        color="tab:green",
        label="HTTP requests/s per portal (mean of all portals)",
    )
    limit = (d.get("limit") or {}).get("rate_per_s")
    if limit:
        bottom.axhline(
            limit, color="tab:red", linestyle="--", linewidth=1, label=f"Bitrix24 limit {limit:g}/s"
        )
    bottom.set_ylabel("requests / s / portal")
    bottom.set_xlabel("seconds since Bitrix24 came back (dispatcher restarted)")
    bottom.set_ylim(bottom=0)
    bottom.grid(True, alpha=0.3)
    bottom.legend(fontsize=7, loc="upper right")
    total = d.get("messages")
    fig.suptitle(
        f"backlog drain: {total:,} messages across {portals} portals; bound: {d.get('bound')}"
        f" (Bitrix24's limit would allow {bound:,.0f} msg/s)",
        fontsize=10,
    )
    return fig


CURVES: dict[str, tuple[str, Callable[[dict[str, Any]], Any | None]]] = {
    MAPPER_LOOKUP_PNG: ("mapper_lookup", mapper_lookup_figure),
    BACKLOG_DRAIN_PNG: ("backlog_drain", backlog_drain_figure),
}


def register() -> None:
    """Adds these curves to bench.plots' registry when that module exists (once)."""
    try:
        plots = importlib.import_module("bench.plots")
    except ImportError:
        return
    known = {c.png for c in getattr(plots, "CURVES", [])}
    for png, (source, fn) in CURVES.items():
        if png not in known:
            plots.curve(png, source)(fn)


def save(result: dict[str, Any], scenario: str, folder: Path) -> list[str]:
    """This scenario's PNGs into `folder` (bench/results/plots); [] without matplotlib."""
    written = []
    for png, (source, fn) in CURVES.items():
        if source != scenario:
            continue
        try:
            fig = fn(result)
        except Exception as exc:  # plotting never fails a run
            print(f"plot {png}: {type(exc).__name__}: {exc}")
            continue
        if fig is None:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        fig.savefig(folder / png, dpi=100)
        written.append(str(folder / png))
    return written
