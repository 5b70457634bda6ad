"""The long first-run steps of `make run` say what they do and keep saying it: dev/stack/lib.sh's heartbeat
logs the time so far and the usual duration while a build runs, and passes the build's outcome through."""

from __future__ import annotations

import subprocess
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "stack" / "lib.sh"


def run(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f'source "{LIB}"; {script}'],
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "HEARTBEAT_S": "1", "STACK_NAME": "t"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_long_step_keeps_saying_how_long_so_far_and_how_long_usually() -> None:
    done = run('heartbeat "building jaeger" "5-10 minutes" sleep 2.5')
    assert done.returncode == 0, done.stderr
    beats = [line for line in done.stderr.splitlines() if "still building jaeger" in line]
    assert len(beats) >= 2 and "0m1s so far (usually 5-10 minutes)" in beats[0]


def test_a_failing_step_fails_and_a_quick_one_says_nothing() -> None:
    failed = run('heartbeat "building helm" "2 minutes" bash -c "exit 3"')
    assert failed.returncode == 3
    assert "still" not in failed.stderr
