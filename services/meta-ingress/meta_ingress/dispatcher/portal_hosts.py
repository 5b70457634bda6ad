"""Which hosts an operator's file links may name: the conversation's own portal (its domain and REST
endpoint host, as token-keeper stored them at install) plus ZAPTRIX_FILE_HOST_ALLOWLIST.

The portal is the one the WhatsApp channel is bound to (mapper), never a domain named by the event.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from zaptrix.clients import Clients
from zaptrix.egress import HostAllowlist
from zaptrix.rpc import RpcNotFound, call
from zaptrix.ttlcache import AsyncTtlCache, NotFoundError
from zaptrix.v1 import token_keeper_pb2


def _host(text: str) -> str:
    """The host of a URL or of a bare ``name[:port]``."""
    if not text:
        return ""
    return urlsplit(text if "//" in text else "//" + text).hostname or ""


class PortalHosts:
    def __init__(self, clients: Clients | None, extra_suffixes: list[str]) -> None:
        self.clients = clients
        self.extra = tuple(extra_suffixes)
        self._cache: AsyncTtlCache[str, tuple[str, ...]] = AsyncTtlCache(
            self._load, ttl_s=300.0, negative_ttl_s=30.0, stale_max_s=3600.0, name="portal_hosts"
        )

    async def _load(self, member_id: str) -> tuple[str, ...]:
        if self.clients is None or not member_id:
            raise NotFoundError("no portal")
        try:
            status = await call(
                "token-keeper GetPortalStatus",
                self.clients.token_keeper.GetPortalStatus(
                    token_keeper_pb2.GetPortalStatusRequest(member_id=member_id), timeout=self.clients.timeout
                ),
            )
        except RpcNotFound:
            raise NotFoundError(f"portal {member_id} is not installed") from None
        return tuple(h for h in (_host(status.domain), _host(status.client_endpoint)) if h)

    async def allowlist(self, member_id: str) -> HostAllowlist:
        """The hosts of ``member_id``'s portal and the configured suffixes (TransientError when
        token-keeper cannot answer and nothing is cached)."""
        try:
            hosts: tuple[str, ...] = await self._cache.get(member_id)
        except NotFoundError:
            hosts = ()
        return HostAllowlist.of(hosts, self.extra)
