"""A process's main, the same for every web and dispatcher process: JSON logging, then telemetry around
the process's body (flushed on the way out)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from zaptrix.gcpauses import watch_gc_pauses
from zaptrix.logging import configure_logging
from zaptrix.telemetry import setup_telemetry, shutdown_telemetry

if TYPE_CHECKING:  # not imported at run time: the dispatchers and gRPC servers serve no Sanic app (~7 MiB)
    from sanic import Sanic


def run_process(
    service: str, log_level: str, body: Callable[[], None], after_logging: Callable[[], None] | None = None
) -> None:
    """Logging (then ``after_logging``, e.g. quieter library loggers) and telemetry set up, ``body()`` run."""
    configure_logging(service, log_level)
    watch_gc_pauses()  # zaptrix_gc_pause_seconds
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


# Young-generation threshold of a web process once it serves (CPython's default: 700). A webhook in flight
# holds a few dozen gc-tracked objects (JSON tree, protobuf, span, futures), so at 32 concurrent requests
# the default count hovers around 700 and a collection ran every ~30 webhooks, walking the live requests
# and promoting them; measured with bench/ingress_cpu.py at -c32: 124 µs of collection per webhook, none
# at 10,000 (docs/benchmarks.md). Reference cycles still get collected, only ~14x less often.
WEB_GC_GEN0_THRESHOLD = 10_000


def tune_gc_for_serving() -> None:
    """Once everything is imported and started: the startup heap moves out of the collector's reach
    (gc.freeze: it is never garbage) and the young generation gets the larger threshold above."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(WEB_GC_GEN0_THRESHOLD, gen1, gen2)


def serve_web(app: Sanic, host: str, port: int) -> None:  # type: ignore[type-arg]
    """A web process's Sanic app in this process (one worker; access logs come from instrument_sanic),
    with the collector tuned for serving once it has started (tune_gc_for_serving)."""

    async def tune_gc(_: Sanic) -> None:  # type: ignore[type-arg]
        tune_gc_for_serving()

    app.after_server_start(tune_gc)
    app.run(host=host, port=port, single_process=True, access_log=False, motd=False)


__all__ = ["run_async", "run_process", "serve_web", "tune_gc_for_serving"]
