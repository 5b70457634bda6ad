"""The Grafana dashboard's panels as one PNG, drawn with matplotlib from a bench run's scrapes.

    BENCH_SCALE=0.3 BENCH_RECORD_METRICS=1 make bench BENCH="inbound_e2e outbound_latency portal_rate"
    python -m bench.dashboard_png bench/results/*-metrics.jsonl -o docs/observability-dashboard.png

Each panel's queries (charts/zaptrix/dashboards/zaptrix.json) are evaluated by a small PromQL evaluator that
knows the subset the dashboard uses (selectors, rate, increase, sum/max by, histogram_quantile), over the
scrapes bench/metrics_recorder.py took each second. The runs are laid end to end on one time axis. Grafana's
$__rate_interval becomes RATE_WINDOW (the runs are short); Prometheus's extrapolation at the window's edges is
left out (a rate is the increase between the first and last sample in the window over their distance).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "charts" / "zaptrix" / "dashboards" / "zaptrix.json"
RATE_WINDOW = "10s"
STEP_S = 2.0
LOOKBACK_S = 300.0
GAP_S = 10.0  # between two runs on the time axis

Labels = frozenset[tuple[str, str]]
Vector = dict[Labels, float]
Series = dict[tuple[str, Labels], list[tuple[float, float]]]


def load(paths: list[Path]) -> tuple[Series, float, float]:
    """The scrapes of every run as series (name, labels) -> [(t, value)], runs laid end to end."""
    series: Series = defaultdict(list)
    offset = 0.0
    for path in paths:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if not lines:
            continue
        start = lines[0]["t"]
        for scrape in lines:
            t = scrape["t"] - start + offset
            for name, labels, value in scrape["samples"]:
                key = frozenset({**labels, "pod": scrape["pod"], "namespace": "bench"}.items())
                series[(name, key)].append((t, value))
        offset += lines[-1]["t"] - start + GAP_S
    return series, 0.0, offset - GAP_S


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d|w)", duration)
    if not m:
        raise ValueError(f"duration {duration!r}")
    return int(m[1]) * units[m[2]]


_TOKEN = re.compile(r'\s*(?:(?P<dur>\d+(?:ms|s|m|h|d|w)\b)|(?P<num>\d+(?:\.\d+)?)|(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)|(?P<str>"(?:[^"\\]|\\.)*")'
                    r"|(?P<op>=~|!~|!=|[(){}\[\],=]))")  # fmt: skip


def tokenize(expr: str) -> list[str]:
    tokens, pos = [], 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise ValueError(f"cannot read {expr[pos:]!r}")
        tokens.append(m.group(m.lastgroup or "op"))
        pos = m.end()
    return tokens


class Query:
    """One PromQL expression of the supported subset, evaluated at instants over the recorded series."""

    def __init__(self, expr: str, series: Series) -> None:
        self.tokens = tokenize(expr)
        self.series = series
        self.pos = 0
        self.tree = self._expr()
        if self.pos != len(self.tokens):
            raise ValueError(f"unsupported PromQL after {self.tokens[: self.pos]}: {expr}")

    # --- parsing ---
    def _next(self) -> str:
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def _expect(self, tok: str) -> None:
        got = self._next()
        if got != tok:
            raise ValueError(f"expected {tok}, got {got}")

    def _labels(self) -> list[str]:
        self._expect("(")
        out = []
        while self.tokens[self.pos] != ")":
            tok = self._next()
            if tok != ",":
                out.append(tok)
        self._expect(")")
        return out

    def _expr(self) -> Any:
        tok = self._next()
        if re.fullmatch(r"\d+(\.\d+)?", tok):
            return ("num", float(tok))
        if tok in ("sum", "max"):
            by = self._labels() if self.tokens[self.pos] == "by" and self._next() == "by" else None
            self._expect("(")
            inner = self._expr()
            self._expect(")")
            return ("agg", tok, by, inner)
        if tok in ("rate", "increase", "histogram_quantile"):
            self._expect("(")
            args = [self._expr()]
            while self.tokens[self.pos] == ",":
                self._next()
                args.append(self._expr())
            self._expect(")")
            return ("fn", tok, args)
        matchers: list[tuple[str, str, str]] = []
        if self.tokens[self.pos : self.pos + 1] == ["{"]:
            self._next()
            while self.tokens[self.pos] != "}":
                label, op, value = self._next(), self._next(), json.loads(self._next())
                matchers.append((label, op, value))
                if self.tokens[self.pos] == ",":
                    self._next()
            self._expect("}")
        window = None
        if self.tokens[self.pos : self.pos + 1] == ["["]:
            self._next()
            window = _seconds(self._next())
            self._expect("]")
        return ("sel", tok, matchers, window)

    # --- evaluation ---
    def _matching(
        self, name: str, matchers: list[tuple[str, str, str]]
    ) -> list[tuple[Labels, list[tuple[float, float]]]]:
        out = []
        for (n, labels), points in self.series.items():
            if n != name:
                continue
            d = dict(labels)
            ok = True
            for label, op, value in matchers:
                have = d.get(label, "")
                hit = re.fullmatch(value, have) is not None if op in ("=~", "!~") else have == value
                ok &= hit if op in ("=", "=~") else not hit
            if ok:
                out.append((labels, points))
        return out

    def at(self, t: float) -> Vector | float:
        value: Vector | float = self._eval(self.tree, t)
        return value

    def _eval(self, node: Any, t: float) -> Any:
        kind = node[0]
        if kind == "num":
            return node[1]
        if kind == "sel":
            _, name, matchers, _window = node
            out: Vector = {}
            for labels, points in self._matching(name, matchers):
                seen = [v for ts, v in points if t - LOOKBACK_S < ts <= t]
                if seen:
                    out[labels] = seen[-1]
            return out
        if kind == "agg":
            _, op, by, inner = node
            groups: dict[Labels, list[float]] = defaultdict(list)
            for labels, v in self._eval(inner, t).items():
                groups[frozenset((k, x) for k, x in labels if by is not None and k in by)].append(v)
            return {k: (sum(vs) if op == "sum" else max(vs)) for k, vs in groups.items()}
        _, fn, args = node
        if fn in ("rate", "increase"):
            _, name, matchers, window = args[0]
            out = {}
            for labels, points in self._matching(name, matchers):
                inside = [(ts, v) for ts, v in points if t - window < ts <= t]
                if len(inside) < 2:
                    continue
                # a counter that went down was reset: it grew by its new value
                grew = sum(b[1] - a[1] if b[1] >= a[1] else b[1] for a, b in itertools.pairwise(inside))
                span = inside[-1][0] - inside[0][0]
                rate = grew / span if span > 0 else 0.0
                out[frozenset((k, x) for k, x in labels if k != "__name__")] = (
                    rate if fn == "rate" else rate * window
                )
            return out
        q = self._eval(args[0], t)
        return _quantile(q, self._eval(args[1], t))


def _quantile(q: float, buckets: Vector) -> Vector:
    """Prometheus's histogram_quantile: linear interpolation inside the bucket that holds the rank."""
    groups: dict[Labels, list[tuple[float, float]]] = defaultdict(list)
    for labels, count in buckets.items():
        d = dict(labels)
        le = float(d.pop("le"))
        groups[frozenset(d.items())].append((le, count))
    out: Vector = {}
    for labels, bs in groups.items():
        bs.sort()
        total = bs[-1][1]
        if total <= 0 or not math.isinf(bs[-1][0]):
            continue
        rank = q * total
        lower, prev = 0.0, 0.0
        for le, count in bs:
            if count >= rank:
                if math.isinf(le):
                    out[labels] = lower
                else:
                    out[labels] = lower + (le - lower) * (
                        (rank - prev) / (count - prev) if count > prev else 0
                    )
                break
            lower, prev = le, count
    return out


def _legend(fmt: str, labels: Labels) -> str:
    d = dict(labels)
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: d.get(m[1], ""), fmt)


def draw(series: Series, end: float, out: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p.get("targets")]
    cols = 2
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(15, 3.1 * rows), squeeze=False)
    times = [i * STEP_S for i in range(int(end / STEP_S) + 1)]
    for ax, panel in zip(axes.flat, panels, strict=False):
        drawn = 0
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", RATE_WINDOW).replace("$namespace", ".*")
            query = Query(expr, series)
            lines: dict[Labels, list[float]] = {}
            for i, t in enumerate(times):
                value = query.at(t)
                for labels, v in value.items() if isinstance(value, dict) else []:
                    lines.setdefault(labels, [math.nan] * len(times))[i] = v
            for labels, values in sorted(
                lines.items(), key=lambda kv: _legend(target["legendFormat"], kv[0])
            ):
                if all(math.isnan(v) for v in values):
                    continue
                ax.plot(times, values, linewidth=1.2, label=_legend(target["legendFormat"], labels)[:48])
                drawn += 1
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        ax.set_title(panel["title"], fontsize=10, loc="left")
        ax.set_ylabel({"ops": "per second", "s": "seconds", "short": ""}.get(unit, unit), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=6.5, loc="upper left", ncol=2 if drawn > 4 else 1)
        else:
            ax.text(
                0.5,
                0.5,
                "no data in this run",
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="grey",
            )
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("seconds into the bench runs", fontsize=8)
    fig.suptitle(f"{dashboard['title']} dashboard, evaluated over a bench run's metrics", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(out, dpi=80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recordings", nargs="+", type=Path)
    parser.add_argument("-o", "--out", type=Path, default=ROOT / "docs" / "observability-dashboard.png")
    args = parser.parse_args()
    series, _start, end = load(args.recordings)
    draw(series, end, args.out)
    print(f"{args.out}: {len(series)} series, {end:.0f} s")


if __name__ == "__main__":
    main()
