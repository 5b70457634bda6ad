"""A process-wide byte budget for files spooled on their way from Bitrix24 to the Graph API.

A file is written to an anonymous temporary file (the pod's /tmp is an emptyDir; the root filesystem is
read-only), never held in memory. The budget bounds what all conversations together hold there; a
download reserves its declared size (or the upload cap when the server does not say) before writing,
and a reservation that does not fit waits, for a bounded time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from meta_ingress.metrics import FILE_SPOOL_BYTES


class ByteBudget:
    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._changed = asyncio.Condition()

    @asynccontextmanager
    async def reserve(self, size: int) -> AsyncIterator[int]:
        """Hold ``size`` bytes (at most the whole budget) until the block ends; waits while they do not
        fit. The caller bounds the wait (asyncio.timeout)."""
        size = max(0, min(size, self.total))
        async with self._changed:
            await self._changed.wait_for(lambda: self.used + size <= self.total)
            self.used += size
            FILE_SPOOL_BYTES.set(self.used)
        try:
            yield size
        finally:
            async with self._changed:
                self.used -= size
                FILE_SPOOL_BYTES.set(self.used)
                self._changed.notify_all()
