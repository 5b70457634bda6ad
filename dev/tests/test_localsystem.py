"""The local runner (dev/localsystem.py, `make run`, the e2e fixture) survives any output and always stops
what it started: a 1 MB line neither kills its log pump nor blocks the child; SIGINT, SIGTERM and SIGHUP
(with the terminal gone) stop every child and grandchild; a second signal kills what ignores the first."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

DEV = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(DEV))
from localsystem import LocalSystem, Ports, Process  # noqa: E402
from zaptrix_testing.ports import free_port  # noqa: E402

pytestmark = pytest.mark.processes  # every test here starts real child processes

# Writes 1 MB lines to stdout and stderr at start and on every request, then answers HTTP.
LOUD_CHILD = textwrap.dedent(
    """
    import http.server, sys
    sys.stdout.write("x" * 1_000_000 + "\\n"); sys.stdout.flush()
    sys.stderr.write("e" * 1_000_000 + "\\n"); sys.stderr.flush()
    sys.stdout.write("no newline at the end " * 50_000); sys.stdout.flush()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            sys.stdout.write("\\n" + "y" * 1_000_000 + "\\n"); sys.stdout.flush()
            self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
        def log_message(self, *args):
            pass

    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
    """
)


class BrokenTerminal:
    """A stdout whose terminal was closed."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise OSError(5, "Input/output error")


async def test_a_child_printing_1mb_lines_keeps_running_and_answering(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdout", BrokenTerminal())  # echoing fails too: the pump must go on
    system = LocalSystem(ports=Ports(), state_dir=tmp_path, database_url="", echo=True)
    (tmp_path / "logs").mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"

    async def answers() -> bool:
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                return (await client.get(url)).status_code == 200
        except httpx.HTTPError:
            return False

    child = Process("loud", [sys.executable, "-c", LOUD_CHILD, str(port)], dict(os.environ), answers)
    try:
        await system.start_process(child, ready_timeout_s=30)
        async with httpx.AsyncClient(timeout=10) as client:
            for _ in range(5):  # 5 MB more output, each request answered
                assert (await client.get(url)).text == "ok"
        assert child.proc is not None and child.proc.returncode is None
    finally:
        await system.stop()
    log = (tmp_path / "logs" / "loud.log").read_bytes()
    assert log.count(b"y" * 1_000_000) >= 5 and b"e" * 1_000_000 in log  # stderr is drained and kept too


# A runner like dev/run.py: two children, each with a grandchild; both may ignore SIGTERM.
RUNNER = textwrap.dedent(
    """
    import asyncio, os, sys
    from pathlib import Path
    sys.path.insert(0, {dev!r})
    from localsystem import LocalSystem, Ports, Process, say, serve_until_signalled

    CHILD = '''
    import signal, subprocess, sys, time
    if sys.argv[1] == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print("PID", grandchild.pid, flush=True)
    while True:
        print("tick " * 20_000, flush=True)  # keep talking: a dead terminal must not matter
        time.sleep(0.2)
    '''

    async def main() -> None:
        system = LocalSystem(ports=Ports(), state_dir=Path(sys.argv[1]), database_url="", echo=True,
                             stop_grace_s=float(sys.argv[3]))
        (Path(sys.argv[1]) / "logs").mkdir(exist_ok=True)

        async def up() -> None:
            for i in range(2):
                argv = [sys.executable, "-c", CHILD, sys.argv[2]]
                await system.start_process(Process(f"child{{i}}", argv, dict(os.environ)))
            say("PID " + " ".join(str(p.proc.pid) for p in system.processes.values()) + "\\n")
            say("READY\\n")

        await serve_until_signalled(system, up)

    asyncio.run(main())
    """
)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has gone


async def _start_runner(
    tmp_path: Path, mode: str, grace_s: float
) -> tuple[asyncio.subprocess.Process, set[int]]:
    script = tmp_path / "runner.py"
    script.write_text(RUNNER.format(dev=str(DEV)))
    runner = await asyncio.create_subprocess_exec(
        sys.executable, str(script), str(tmp_path), mode, str(grace_s), stdout=asyncio.subprocess.PIPE
    )
    assert runner.stdout is not None
    pids: set[int] = set()
    ready = False
    async with asyncio.timeout(60):
        while not (ready and len(pids) >= 4):  # 2 children (from READY's line), 2 grandchildren (echoed)
            line = (await runner.stdout.readline()).decode(errors="replace")
            assert line, "the runner ended before it was ready"
            if "PID " in line and "tick" not in line:
                pids.update(int(p) for p in line.split("PID ", 1)[1].split())
            ready = ready or line.startswith("READY")
    return runner, pids


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
async def test_a_signal_to_the_runner_stops_all_children_and_grandchildren(
    tmp_path: Path, sig: signal.Signals
) -> None:
    runner, pids = await _start_runner(tmp_path, "polite", grace_s=10)
    assert runner.stdout is not None
    if sig == signal.SIGHUP:  # the terminal closed: every write of the runner now fails with EPIPE
        runner.stdout.feed_eof()
        transport = runner._transport  # type: ignore[attr-defined]
        transport.get_pipe_transport(1).close()
        await asyncio.sleep(0.5)  # the children keep talking into the dead terminal meanwhile
    runner.send_signal(sig)
    async with asyncio.timeout(60):
        await runner.wait()
    assert [p for p in pids if _alive(p)] == []


async def test_a_second_signal_kills_children_that_ignore_sigterm(tmp_path: Path) -> None:
    # With a 600 s grace period only the second signal can end it within the test's timeout.
    runner, pids = await _start_runner(tmp_path, "stubborn", grace_s=600)
    assert runner.stdout is not None
    runner.send_signal(signal.SIGINT)
    async with asyncio.timeout(30):
        while b"stopping services" not in await runner.stdout.readline():
            pass
    runner.send_signal(signal.SIGINT)
    async with asyncio.timeout(60):
        await runner.wait()
    assert [p for p in pids if _alive(p)] == []
