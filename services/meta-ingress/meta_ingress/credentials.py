"""Channel credentials from token-keeper, cached in process (see cache.py for the policy)."""

from __future__ import annotations

from dataclasses import dataclass

from zaptrix.clients import Clients
from zaptrix.kafka import TransientError
from zaptrix.v1 import token_keeper_pb2

from meta_ingress.cache import AsyncTtlCache, NotFoundError
from meta_ingress.metrics import CREDENTIALS_CACHE
from meta_ingress.rpc import RpcNotFound, call
from meta_ingress.settings import MetaSettings


class UnknownChannel(NotFoundError):
    """token-keeper holds no credentials for this phone_number_id."""


@dataclass(frozen=True)
class Credentials:
    phone_number_id: str
    access_token: str
    app_secret: str
    verify_token: str
    waba_id: str

    def __repr__(self) -> str:  # never print secrets, whatever logs the object
        return f"Credentials(phone_number_id={self.phone_number_id!r}, waba_id={self.waba_id!r})"


class CredentialsCache:
    def __init__(self, clients: Clients, settings: MetaSettings) -> None:
        self._clients = clients
        self._cache: AsyncTtlCache[str, Credentials] = AsyncTtlCache(
            self._load,
            ttl_s=settings.credentials_cache_ttl_s,
            negative_ttl_s=settings.credentials_negative_ttl_s,
            stale_max_s=settings.credentials_stale_max_s,
            counter=CREDENTIALS_CACHE,
            name="credentials",
        )

    async def _load(self, phone_number_id: str) -> Credentials:
        request = token_keeper_pb2.GetChannelCredentialsRequest(phone_number_id=phone_number_id)
        try:
            resp = await call(
                "token-keeper GetChannelCredentials",
                self._clients.token_keeper.GetChannelCredentials(request, timeout=self._clients.timeout),
            )
        except RpcNotFound:
            raise UnknownChannel(f"no credentials for phone_number_id {phone_number_id}") from None
        return Credentials(
            phone_number_id=resp.phone_number_id or phone_number_id,
            access_token=resp.access_token,
            app_secret=resp.app_secret,
            verify_token=resp.verify_token,
            waba_id=resp.waba_id,
        )

    async def get(self, phone_number_id: str) -> Credentials:
        """Raises UnknownChannel, or TransientError when token-keeper cannot be reached (and nothing cached)."""
        return await self._cache.get(phone_number_id)

    def invalidate(self, phone_number_id: str) -> None:
        self._cache.invalidate(phone_number_id)

    def known_app_secrets(self) -> set[str]:
        return {c.app_secret for c in self._cache.values() if c.app_secret}

    async def check_verify_token(self, token: str) -> bool:
        request = token_keeper_pb2.CheckVerifyTokenRequest(verify_token=token)
        resp = await call(
            "token-keeper CheckVerifyToken",
            self._clients.token_keeper.CheckVerifyToken(request, timeout=self._clients.timeout),
        )
        return bool(resp.valid)


__all__ = ["Credentials", "CredentialsCache", "TransientError", "UnknownChannel"]
