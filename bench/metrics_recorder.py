"""BENCH_RECORD_METRICS=1: every process's /metrics, scraped each second while a scenario runs, into
bench/results/<scenario>-metrics.jsonl (one line per scrape: {"t", "pod", "samples": [[name, labels, value]]}).
bench/dashboard_png.py evaluates the Grafana dashboard's queries over these scrapes (docs/observability.md)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from bench.common import parse_metrics

if TYPE_CHECKING:
    from localsystem import Ports  # dev/ is on sys.path (bench.common puts it there)


def _targets(ports: Ports) -> dict[str, str]:
    """The processes' /metrics as the chart's ServiceMonitors scrape them (pod name: URL)."""
    return {
        "meta-ingress": f"http://127.0.0.1:{ports.meta_web}/metrics",
        "bitrix-ingress": f"http://127.0.0.1:{ports.bitrix_web}/metrics",
        "meta-dispatcher": f"http://127.0.0.1:{ports.meta_dispatcher}/metrics",
        "bitrix-dispatcher": f"http://127.0.0.1:{ports.bitrix_dispatcher}/metrics",
        "mapper": f"http://127.0.0.1:{ports.mapper_metrics}/metrics",
        "token-keeper": f"http://127.0.0.1:{ports.token_keeper_metrics}/metrics",
    }


@contextlib.asynccontextmanager
async def recording(
    ports: Ports, results: Path, scenario: str, interval_s: float = 1.0
) -> AsyncIterator[None]:
    if os.environ.get("BENCH_RECORD_METRICS") != "1":
        yield
        return
    await asyncio.to_thread(results.mkdir, parents=True, exist_ok=True)
    path = results / f"{scenario}-metrics.jsonl"

    async def loop() -> None:
        async with httpx.AsyncClient(timeout=2) as client:
            with path.open("w") as out:
                while True:
                    t = time.time()
                    for pod, url in _targets(ports).items():
                        try:
                            text = (await client.get(url)).text
                        except httpx.HTTPError:
                            continue  # not started (a scenario may run only some processes) or stopping
                        samples = [s for s in parse_metrics(text) if s[0].startswith("zaptrix_")]
                        out.write(json.dumps({"t": t, "pod": pod, "samples": samples}) + "\n")
                    await asyncio.sleep(max(0.0, interval_s - (time.time() - t)))

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
