"""Support code of zaptrix-admin's tests (the module name is unique in the repo)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg


@dataclass
class Seeded:
    stub: Any  # MapperAsyncStub
    dsn: str

    async def sql(self, query: str, *args: Any) -> Any:
        conn = await asyncpg.connect(self.dsn)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()
