"""Channel bindings (phone_number_id → portal, connector, Open Line) from the mapper, cached briefly."""

from __future__ import annotations

import time
from typing import Any

from zaptrix.errors import PermanentError
from zaptrix.rpc import RpcNotFound
from zaptrix.v1 import mapper_pb2

from bitrix_ingress.deps import Deps


class TtlCache:
    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._data: dict[str, tuple[float, Any]] = {}

    def get(self, key: str) -> Any:
        item = self._data.get(key)
        if item is None or item[0] < time.monotonic():
            return None
        return item[1]

    def put(self, key: str, value: Any) -> None:
        if len(self._data) > 50_000:
            self._data.clear()
        self._data[key] = (time.monotonic() + self.ttl_s, value)


class Channels:
    def __init__(self, deps: Deps, ttl_s: float) -> None:
        self.deps = deps
        self._cache = TtlCache(ttl_s)

    async def get(self, phone_number_id: str) -> mapper_pb2.Channel:
        cached = self._cache.get(phone_number_id)
        if cached is not None:
            channel: mapper_pb2.Channel = cached
            return channel
        try:
            channel = await self.deps.get_channel(phone_number_id)
        except RpcNotFound as exc:
            raise PermanentError(f"no channel is bound to phone_number_id {phone_number_id}") from exc
        if not channel.member_id or not channel.line_id:
            raise PermanentError(f"channel {phone_number_id} is not bound to a portal's Open Line")
        self._cache.put(phone_number_id, channel)
        return channel
