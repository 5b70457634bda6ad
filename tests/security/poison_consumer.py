"""A consumer process for test_hostile_delays: a record whose text is "poison" kills the process.

argv: bootstrap, topic prefix, group, file to append handled event ids to. The crash limit is the default.
Exits 0 once it has handled the event whose text is "after"; exits 13 when the poison kills it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from zaptrix.kafka import EventConsumer, EventProducer, Flow, Outcome, Received, per_event, topics_for
from zaptrix.settings import KafkaSettings


async def main(bootstrap: str, prefix: str, group: str, done_file: str) -> None:
    settings = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix)
    topics = topics_for(Flow.WA_TO_B24, prefix)
    producer = EventProducer(settings, client_id="poison")
    await producer.start()
    stopped = asyncio.Event()

    async def handle(rec: Received) -> Outcome:
        text = rec.envelope.customer_message.text
        if text == "poison":
            os._exit(13)  # a segfault, an OOM kill: no exception, no finally
        with Path(done_file).open("a") as out:  # noqa: ASYNC230 (a test stand-in, one line)
            out.write(rec.envelope.event_id + "\n")
        if text == "after":
            stopped.set()
        return Outcome.ok()

    consumer = EventConsumer(settings, topics, group, per_event(handle), producer, client_id="poison")
    try:
        await asyncio.wait_for(consumer.run(stopped), timeout=60)
    finally:
        await producer.stop()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
