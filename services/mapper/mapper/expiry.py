"""Background expiry of dedupe records: small batches, so no sweep holds locks for long."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

from zaptrix.database import DatabaseUnavailable
from zaptrix.logging import get_logger

from mapper.metrics import DEDUPE_EXPIRED, DEDUPE_EXPIRY_ERRORS
from mapper.repository import Repository

log = get_logger(__name__)


async def expire_once(repo: Repository, retention: timedelta, batch: int, pause_s: float = 0.05) -> int:
    """Delete every record older than `retention`, `batch` rows per statement; returns how many."""
    total = 0
    while True:
        deleted = await repo.expire_processed(retention, batch)
        total += deleted
        DEDUPE_EXPIRED.inc(deleted)
        if deleted < batch:
            return total
        await asyncio.sleep(pause_s)  # let RPCs through between batches


async def expire_forever(repo: Repository, retention: timedelta, batch: int, interval_s: float) -> None:
    """Sweep every `interval_s`. Replicas sweep independently; SKIP LOCKED keeps them out of each
    other's way, and a random first delay spreads them out."""
    await asyncio.sleep(random.uniform(0, min(interval_s, 30.0)))  # jitter, not cryptography
    while True:
        try:
            deleted = await expire_once(repo, retention, batch)
            if deleted:
                log.info("expired dedupe records", deleted=deleted)
        except DatabaseUnavailable as exc:
            DEDUPE_EXPIRY_ERRORS.inc()
            log.warning("dedupe expiry skipped", error=str(exc))
        except Exception:
            DEDUPE_EXPIRY_ERRORS.inc()
            log.exception("dedupe expiry failed")
        await asyncio.sleep(interval_s)
