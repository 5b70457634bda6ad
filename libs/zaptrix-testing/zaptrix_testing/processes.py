"""Starting and stopping the processes under test (console scripts of the venv), logs to a file."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent


def console_script(name: str) -> str:
    """The path of a console script installed in the running venv (fails the test when missing)."""
    path = shutil.which(name, path=str(BIN))
    assert path, f"console script {name} is not installed (uv sync)"
    return path


@dataclass
class Proc:
    """A started process, its log file and (when it serves HTTP) its base URL."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    logs = log

    def stop(self, grace_s: float = 10.0) -> None:
        stop_all([self], grace_s)

    async def astop(self, grace_s: float = 10.0) -> None:
        """Stop without blocking the event loop (the process may still be talking to in-test fakes)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            deadline = time.monotonic() + grace_s
            while self.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        self.stop()


def stop_all(procs: Sequence[Proc], grace_s: float = 10.0) -> None:
    """SIGTERM every process, then wait for all (graceful shutdowns run in parallel); SIGKILL stragglers."""
    for p in procs:
        if p.proc.poll() is None:
            p.proc.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.proc.kill()
            p.proc.wait(5)


def start_process(args: list[str], env: dict[str, str], log_path: Path, url: str = "") -> Proc:
    """Start `args` with os.environ + `env`, stdout and stderr to `log_path`; does not wait for readiness."""
    with log_path.open("wb") as out:
        proc = subprocess.Popen(args, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    return Proc(proc, log_path, url)


@dataclass
class Spec:
    """A process to start and the health URL that says it is ready."""

    args: list[str]
    env: dict[str, str]
    health_url: str
    log_path: Path
    ready_status: tuple[int, ...] = (200,)


def start_processes(*specs: Spec, timeout_s: float = 45.0) -> list[Proc]:
    """Start all processes at once (start-up is mostly imports: in parallel it costs one), then wait until
    each health URL answers a ready status. Stops them all when one exits or the time runs out."""
    started = [start_process(s.args, s.env, s.log_path, s.health_url.rsplit("/", 1)[0]) for s in specs]
    deadline = time.monotonic() + timeout_s
    pending = list(range(len(specs)))
    try:
        while pending:
            if time.monotonic() > deadline:
                names = [specs[i].args[0] for i in pending]
                logs = "\n".join(started[i].log() for i in pending)
                raise RuntimeError(f"{names} did not become healthy:\n{logs}")
            for i in list(pending):
                spec, proc = specs[i], started[i]
                if proc.proc.poll() is not None:
                    raise RuntimeError(f"{spec.args[0]} exited with {proc.proc.returncode}:\n{proc.log()}")
                try:
                    if httpx.get(spec.health_url, timeout=0.5).status_code in spec.ready_status:
                        pending.remove(i)
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
    except BaseException:
        stop_all(started)
        raise
    return started


async def wait_http(
    url: str, proc: Proc, timeout_s: float = 40.0, ok: Callable[[int], bool] = lambda s: s < 500
) -> None:
    """Wait (without blocking the loop) until `url` answers a status `ok` accepts; fail if `proc` exits."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            if proc.proc.poll() is not None:
                raise AssertionError(f"process exited ({proc.proc.returncode}):\n{proc.log()[-4000:]}")
            try:
                if ok((await http.get(url, timeout=1.0)).status_code):
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} did not come up:\n{proc.log()[-4000:]}")
