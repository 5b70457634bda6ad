"""Optional sampling profiles of the processes under load (BENCH_PROFILE=1; dev/bench.sh installs py-spy).

py-spy attaches to a running process by pid (as root, which the bench runs as), samples its Python
stacks without stopping it (--nonblocking) and writes collapsed stacks: bench/results/profiles/
<scenario>-<process>.txt, which speedscope or flamegraph.pl read. The JSON of the scenario gets the
heaviest frames. A profiled run costs some CPU on the same cores: its numbers are not comparable with an
unprofiled run.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import BenchEnv, remember_pid, stop_subprocess

ENABLED = os.environ.get("BENCH_PROFILE", "") not in ("", "0", "false")
RATE = os.environ.get(
    "BENCH_PROFILE_RATE", "100"
)  # samples/s; more resolution costs the profiled process more


def pyspy() -> str | None:
    candidates = [
        os.environ.get("BENCH_PYSPY"),
        shutil.which("py-spy"),
        str(Path(os.environ.get("ZAPTRIX_CACHE", Path.home() / ".cache" / "zaptrix")) / "bin" / "py-spy"),
    ]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def summarize(path: Path, top: int = 25) -> dict[str, Any]:
    """Heaviest frames of a collapsed-stack file: inclusive (anywhere on the stack) and self (leaf)."""
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    skip = ("asyncio/", "<module>", "threading.py", "runners.py", "selectors.py", "uvloop/__init__")

    def rows(c: Counter[str]) -> list[tuple[str, float]]:
        out = [(f, round(100 * n / total, 1)) for f, n in c.most_common() if not any(s in f for s in skip)]
        return out[:top]

    return {"samples": total, "inclusive_pct": rows(inclusive), "self_pct": rows(leaf)}


class Profiles:
    """Start py-spy on some pids for `seconds`; collect() waits and summarises."""

    def __init__(self, env: BenchEnv, scenario: str) -> None:
        self.env = env
        self.scenario = scenario
        self.running: list[tuple[str, Path, asyncio.subprocess.Process]] = []
        self.errors: list[str] = []

    async def start(self, targets: dict[str, int], seconds: float) -> None:
        if not ENABLED:
            return
        binary = pyspy()
        if binary is None:
            self.errors.append("py-spy not found (dev/bench.sh installs it when BENCH_PROFILE=1)")
            return
        folder = self.env.results / "profiles"
        folder.mkdir(parents=True, exist_ok=True)
        for name, pid in targets.items():
            out = folder / f"{self.scenario}-{name.replace(' ', '_')}.txt"
            proc = await asyncio.create_subprocess_exec(
                binary,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(max(1, round(seconds))),
                "--rate",
                RATE,
                "--nonblocking",
                "--format",
                "raw",
                "--output",
                str(out),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
            remember_pid(proc.pid)
            self.running.append((name, out, proc))

    async def collect(self) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for name, out, proc in self.running:
            try:
                _, err = await asyncio.wait_for(proc.communicate(), 60)
            except TimeoutError:
                err = b"timed out"
            finally:
                await stop_subprocess(proc)
            if out.exists() and out.stat().st_size:
                result[name] = {"file": str(out), **summarize(out)}
            else:
                result[name] = {"error": err.decode(errors="replace")[-500:]}
        self.running.clear()
        if self.errors:
            result["errors"] = self.errors
        return result


def notes(profiles: dict[str, Any], frames: int = 6) -> list[str]:
    out = []
    for name, p in profiles.items():
        if name == "errors" or "inclusive_pct" not in p:
            continue
        top = ", ".join(f"{fr.split(' (')[0]} {pct}%" for fr, pct in p["inclusive_pct"][:frames])
        out.append(f"py-spy {name} ({p['samples']} samples, {p['file']}): {top}")
    return out
