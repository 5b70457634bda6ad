"""Runs wrk (Debian's package) with bench/wrk/webhooks.lua and parses its JSON summary."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

from bench.common import remember_pid, stop_subprocess

LUA = Path(__file__).resolve().parent / "wrk" / "webhooks.lua"


class WrkError(RuntimeError):
    pass


def wrk_binary() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise WrkError("wrk not found: dev/bench.sh installs it (apt-get install -y wrk)")
    return path


async def run_wrk(
    port: int,
    corpus: Path,
    connections: int,
    duration_s: float,
    threads: int = 1,
    timeout_s: float = 5.0,
    on_started: Any = None,
) -> dict[str, Any]:
    """One wrk run against 127.0.0.1:<port>/webhooks/meta. Returns wrk's numbers with rps and ms."""
    argv = [
        wrk_binary(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={timeout_s:g}s",
        "-s",
        str(LUA),
        f"http://127.0.0.1:{port}",
        "--",
        str(corpus),
    ]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True
    )
    remember_pid(proc.pid)
    try:
        if on_started is not None:
            on_started(proc.pid)
        out, _ = await asyncio.wait_for(proc.communicate(), duration_s + timeout_s + 30)
    finally:
        await stop_subprocess(proc)
    text = out.decode(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise WrkError(f"wrk failed (exit {proc.returncode}):\n{text[-2000:]}")
    data: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
    secs = data["duration_us"] / 1e6
    data["rps"] = round(data["requests"] / secs, 1) if secs else 0.0
    data["ok"] = data["requests"] - data["non2xx"]
    for key in ("p50", "p90", "p99", "p999"):
        data[f"{key}_ms"] = round(data.pop(f"{key}_us") / 1000, 2)
    data["max_ms"] = round(data.pop("max_us") / 1000, 2)
    data["mean_ms"] = round(data.pop("mean_us") / 1000, 2)
    data["connections"] = connections
    data["threads"] = threads
    data["socket_errors"] = sum(
        data[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts")
    )
    return data
