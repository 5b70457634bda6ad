"""aiokafka clients that can no longer make progress, found and reported instead of waited on forever.

aiokafka runs a client's work in background tasks (metadata synchronizer, group coordination, fetcher,
sender). They end only when the client stops; one that ends with an error leaves every caller that needs it
waiting with no error at all. Seen in `make faults` (kafka-kill, 2026-12-05): on uvloop, writing to a socket
the broker had closed raised RuntimeError ("the handler is closed") where aiokafka expects OSError
(aiokafka#1038); the metadata synchronizer died, the next coordinator lookup waited on its metadata update
forever, and the bitrix dispatcher's commit with it: nothing was delivered until the process restarted.

So: ``ended_tasks`` names the background tasks that ended while the client runs, and the consumer and the
producer check them (``EventConsumer`` restarts with a fresh client, ``EventProducer.healthy`` says no); and
every coordinator call of the consumer is bounded (``COORDINATOR_WAIT_S``), in case a wedge shows no ended
task. The attribute names are aiokafka's (pinned in uv.lock; tests/test_kafka_wedges.py checks them).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

COORDINATOR_WAIT_S = 60.0  # a commit or committed-offsets read: the request timeout (40 s) and its retries


class ClientWedged(RuntimeError):
    """An aiokafka client stopped making progress; the caller replaces it."""


def _tasks(client: Any, names: tuple[str, ...]) -> list[tuple[str, Any]]:
    return [(name, getattr(client, name, None)) for name in names]


def consumer_tasks(consumer: AIOKafkaConsumer) -> list[tuple[str, Any]]:
    return [
        *_tasks(consumer._client, ("_sync_task",)),
        *_tasks(consumer._coordinator, ("_coordination_task",)),
        *_tasks(consumer._fetcher, ("_fetch_task",)),
    ]


def producer_tasks(producer: AIOKafkaProducer) -> list[tuple[str, Any]]:
    return [*_tasks(producer.client, ("_sync_task",)), *_tasks(producer._sender, ("_sender_task",))]


async def abandon(client: AIOKafkaConsumer | AIOKafkaProducer, timeout_s: float = 2.0) -> None:
    """After a stop that did not finish (a wedged client): cancel what is left of its background work and
    close its connections (aiokafka's own close re-raises the ended task's error before it closes them), so
    that a replaced client leaks no tasks and no sockets."""
    if isinstance(client, AIOKafkaConsumer):
        coordinator = client._coordinator
        extra = ("_heartbeat_task", "_commit_refresh_task", "_reset_committed_task")
        owned = [*consumer_tasks(client), *_tasks(coordinator, extra)]
        kafka = client._client
    else:
        owned, kafka = producer_tasks(client), client.client
    left = [task for _, task in owned if task is not None and not task.done()]
    for task in left:
        task.cancel()
    if left:
        await asyncio.wait(left, timeout=timeout_s)
    for conn in list(kafka._conns.values()):
        conn.close()


def ended_tasks(tasks: list[tuple[str, Any]]) -> list[str]:
    """The background tasks (of a running client) that have ended, with how."""
    ended = []
    for name, task in tasks:
        if task is None or not task.done():
            continue
        how = "cancelled" if task.cancelled() else repr(task.exception())
        ended.append(f"{name.strip('_')}: {how}")
    return ended


__all__ = [
    "COORDINATOR_WAIT_S",
    "ClientWedged",
    "abandon",
    "consumer_tasks",
    "ended_tasks",
    "producer_tasks",
]
