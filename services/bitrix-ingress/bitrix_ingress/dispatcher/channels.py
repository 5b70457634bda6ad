"""Channel bindings (phone_number_id → portal, connector, Open Line) from the mapper, cached briefly."""

from __future__ import annotations

from zaptrix.errors import PermanentError
from zaptrix.rpc import RpcNotFound
from zaptrix.ttlcache import TtlCache
from zaptrix.v1 import mapper_pb2

from bitrix_ingress.deps import Deps


class Channels:
    def __init__(self, deps: Deps, ttl_s: float) -> None:
        self.deps = deps
        self._cache: TtlCache[str, mapper_pb2.Channel] = TtlCache(50_000, ttl_s)

    async def get(self, phone_number_id: str) -> mapper_pb2.Channel:
        cached = self._cache.get(phone_number_id)
        if cached is not None:
            return cached
        try:
            channel = await self.deps.get_channel(phone_number_id)
        except RpcNotFound as exc:
            raise PermanentError(f"no channel is bound to phone_number_id {phone_number_id}") from exc
        if not channel.member_id or not channel.line_id:
            raise PermanentError(f"channel {phone_number_id} is not bound to a portal's Open Line")
        self._cache.put(phone_number_id, channel)
        return channel

    def forget(self, phone_number_id: str) -> None:
        self._cache.invalidate(phone_number_id)
