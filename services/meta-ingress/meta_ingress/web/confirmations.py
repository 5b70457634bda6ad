"""Statuses echoing one of our part ids become the mapper record ``sent:<phone_number_id>:<part id>`` →
wamid (sent_parts.py), which the dispatcher reads before it resends a send whose outcome was ambiguous.

Best effort and off the webhook's path: the answer to Meta never waits for the mapper or fails because of
it (the status event itself goes to Kafka as always). One bounded background task per webhook, one
MarkProcessed per part (the first of its sent/delivered/read statuses that gets through; a failure leaves
the next status of the message to try again).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from zaptrix.clients import Clients
from zaptrix.logging import get_logger
from zaptrix.rpc import call
from zaptrix.v1 import mapper_pb2

from meta_ingress.metrics import SEND_CONFIRMATIONS

log = get_logger(__name__)
MAX_TASKS = 256  # webhooks whose confirmations are in flight; beyond: dropped (counted)
RECORDED_KEPT = 20_000  # record ids this process recorded lately: the later statuses of a part cost nothing


class Confirmations:
    def __init__(self, clients: Clients) -> None:
        self.clients = clients
        self._tasks: set[asyncio.Task[None]] = set()
        self._recorded: OrderedDict[str, None] = OrderedDict()

    def record(self, confirmations: list[tuple[str, str]]) -> None:
        """Record (sent record id, wamid) pairs in the background; returns at once."""
        todo = list(dict.fromkeys((rid, wamid) for rid, wamid in confirmations if rid not in self._recorded))
        if not todo:
            return
        if len(self._tasks) >= MAX_TASKS:
            SEND_CONFIRMATIONS.labels("dropped").inc(len(todo))
            return
        task = asyncio.create_task(self._mark(todo))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _mark(self, todo: list[tuple[str, str]]) -> None:
        for record_id, wamid in todo:
            request = mapper_pb2.MarkProcessedRequest(event_id=record_id, result=wamid[:1000])
            try:
                await call(
                    "mapper MarkProcessed",
                    self.clients.mapper.MarkProcessed(request, timeout=self.clients.timeout),
                )
            except Exception as exc:  # best effort: never more than a log line and a count
                SEND_CONFIRMATIONS.labels("failed").inc()
                log.warning("send confirmation not recorded", record_id=record_id[:120], error=str(exc)[:200])
                continue
            SEND_CONFIRMATIONS.labels("recorded").inc()
            self._recorded[record_id] = None
            while len(self._recorded) > RECORDED_KEPT:
                self._recorded.popitem(last=False)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
