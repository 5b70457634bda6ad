"""A process's main, the same for every web and dispatcher process: JSON logging, then telemetry around
the process's body (flushed on the way out)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from sanic import Sanic

from zaptrix.logging import configure_logging
from zaptrix.telemetry import setup_telemetry, shutdown_telemetry


def run_process(
    service: str, log_level: str, body: Callable[[], None], after_logging: Callable[[], None] | None = None
) -> None:
    """Logging (then ``after_logging``, e.g. quieter library loggers) and telemetry set up, ``body()`` run."""
    configure_logging(service, log_level)
    if after_logging is not None:
        after_logging()
    setup_telemetry(service)
    try:
        body()
    finally:
        shutdown_telemetry()


def run_async(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """``main()`` on uvloop where available (as Sanic runs the web processes), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


def serve_web(app: Sanic, host: str, port: int) -> None:  # type: ignore[type-arg]
    """A web process's Sanic app in this process (one worker; access logs come from instrument_sanic)."""
    app.run(host=host, port=port, single_process=True, access_log=False, motd=False)


__all__ = ["run_async", "run_process", "serve_web"]
