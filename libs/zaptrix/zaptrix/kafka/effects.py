"""Effects that happened while handling a record, carried with the record when it is retried.

A handler notes each effect the moment it happens (``Received.happened(part, result)``: a message sent, a
template delivered). If the handling then fails before the effect is recorded (the mapper is down), the
consumer writes the noted effects into the retry (or dead-letter) record's ``zaptrix-effects`` header, so
whichever process or replica handles the retry finds them and records instead of sending again. The fact
survives the process because it is in Kafka (acks=all) before the offset is committed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from zaptrix.kafka.envelope import H_EFFECTS
from zaptrix.logging import get_logger

log = get_logger(__name__)

MAX_EFFECTS = 128  # a record is one event: a few parts, a template, a notice
MAX_KEY_CHARS = 200
MAX_RESULT_CHARS = 1000


def read_effects(headers: Iterable[tuple[str, bytes]]) -> dict[str, str]:
    """The effects noted by earlier attempts. Only our own dispatchers write retry records, but a header
    that is not what we write is ignored (logged), never trusted in part."""
    for key, value in headers:
        if key != H_EFFECTS:
            continue
        try:
            parsed = json.loads(value)
        except ValueError:
            log.warning("unreadable effects header ignored", size=len(value))
            return {}
        if (
            not isinstance(parsed, dict)
            or len(parsed) > MAX_EFFECTS
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in parsed.items())
        ):
            log.warning("malformed effects header ignored", size=len(value))
            return {}
        return {k[:MAX_KEY_CHARS]: v[:MAX_RESULT_CHARS] for k, v in parsed.items()}
    return {}


def effects_header(effects: Mapping[str, str]) -> list[tuple[str, bytes]]:
    """The header for a retry or dead-letter record ([] when nothing happened)."""
    if not effects:
        return []
    if len(effects) > MAX_EFFECTS:  # never expected; keep the newest, which the retry is most likely to redo
        log.error("more effects than a header carries; the oldest are dropped", count=len(effects))
        effects = dict(list(effects.items())[-MAX_EFFECTS:])
    body = {k[:MAX_KEY_CHARS]: v[:MAX_RESULT_CHARS] for k, v in effects.items()}
    return [(H_EFFECTS, json.dumps(body, separators=(",", ":")).encode())]
