"""Channel credentials from token-keeper, cached in process (zaptrix.ttlcache.AsyncTtlCache has the policy)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import grpc
from zaptrix.clients import Clients
from zaptrix.kafka import TransientError
from zaptrix.rpc import RpcNotFound, RpcPermanent, call
from zaptrix.ttlcache import AsyncTtlCache, NotFoundError
from zaptrix.v1 import token_keeper_pb2

from meta_ingress.metrics import CREDENTIALS_CACHE
from meta_ingress.settings import MetaSettings

# Meta's ids are decimal numbers; anything else cannot be a channel and never costs a token-keeper call.
_PHONE_NUMBER_ID = re.compile(r"[0-9]{1,32}")


# Cache keys of a WhatsApp Business Account's app secret (GetWabaAppSecret); a phone_number_id has no colon.
_WABA = "waba:"


class UnknownChannel(NotFoundError):
    """token-keeper holds no credentials for this phone_number_id (or no app secret for this WABA)."""


def valid_phone_number_id(value: str) -> bool:
    return _PHONE_NUMBER_ID.fullmatch(value) is not None


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
            negative_max_entries=settings.credentials_negative_max_entries,
        )

    async def _load(self, key: str) -> Credentials:
        if key.startswith(_WABA):
            return await self._load_waba(key.removeprefix(_WABA))
        return await self._load_channel(key)

    async def _load_waba(self, waba_id: str) -> Credentials:
        """Only the app secret: this entry verifies the WABA's webhooks and is no channel's credentials."""
        request = token_keeper_pb2.GetWabaAppSecretRequest(waba_id=waba_id)
        try:
            resp = await call(
                "token-keeper GetWabaAppSecret",
                self._clients.token_keeper.GetWabaAppSecret(request, timeout=self._clients.timeout),
            )
        except RpcNotFound:
            raise UnknownChannel(f"no app secret for WABA {waba_id}") from None
        except RpcPermanent as exc:
            if exc.code == grpc.StatusCode.INVALID_ARGUMENT:
                raise UnknownChannel(f"invalid WABA id {waba_id[:40]!r}") from None
            raise
        return Credentials(
            phone_number_id=resp.phone_number_id,
            access_token="",
            app_secret=resp.app_secret,
            verify_token="",
            waba_id=resp.waba_id or waba_id,
        )

    async def _load_channel(self, phone_number_id: str) -> Credentials:
        request = token_keeper_pb2.GetChannelCredentialsRequest(phone_number_id=phone_number_id)
        try:
            resp = await call(
                "token-keeper GetChannelCredentials",
                self._clients.token_keeper.GetChannelCredentials(request, timeout=self._clients.timeout),
            )
        except RpcNotFound:
            raise UnknownChannel(f"no credentials for phone_number_id {phone_number_id}") from None
        except RpcPermanent as exc:  # INVALID_ARGUMENT: token-keeper's format check; remember it too
            if exc.code == grpc.StatusCode.INVALID_ARGUMENT:
                raise UnknownChannel(f"invalid phone_number_id {phone_number_id[:40]!r}") from None
            raise
        return Credentials(
            phone_number_id=resp.phone_number_id or phone_number_id,
            access_token=resp.access_token,
            app_secret=resp.app_secret,
            verify_token=resp.verify_token,
            waba_id=resp.waba_id,
        )

    async def get(self, phone_number_id: str) -> Credentials:
        """Raises UnknownChannel, or TransientError when token-keeper cannot be reached (and nothing cached)."""
        if not valid_phone_number_id(phone_number_id):
            raise UnknownChannel(f"invalid phone_number_id {phone_number_id[:40]!r}")
        return await self._cache.get(phone_number_id)

    def cached(self, phone_number_id: str) -> Credentials | None:
        """The channel's cached credentials, without a call or a coroutine (a webhook's usual case)."""
        if not valid_phone_number_id(phone_number_id):  # never a WABA entry by another name
            return None
        return self._cache.cached(phone_number_id)

    def invalidate(self, phone_number_id: str) -> None:
        self._cache.invalidate(phone_number_id)

    def cached_app_secret(self, waba_id: str) -> str | None:
        """The app secret of a cached channel of this WhatsApp Business Account (no token-keeper call): how a
        webhook naming no known number (other fields, or a number not set up yet) can still be verified."""
        if not waba_id:
            return None
        return next(
            (c.app_secret for c in self._cache.values() if c.waba_id == waba_id and c.app_secret), None
        )

    async def waba_app_secret(self, waba_id: str) -> str:
        """The app secret of a channel of this WhatsApp Business Account: a cached channel's (no call), else
        token-keeper's GetWabaAppSecret, cached like a channel (negative answers too). Raises UnknownChannel,
        or TransientError when token-keeper cannot be reached (and nothing cached)."""
        if not valid_phone_number_id(waba_id):  # Meta's ids, WABA ones too, are decimal numbers
            raise UnknownChannel(f"invalid WABA id {waba_id[:40]!r}")
        cached = self.cached_app_secret(waba_id)
        if cached:
            return cached
        secret = (await self._cache.get(_WABA + waba_id)).app_secret
        if not secret:
            raise UnknownChannel(f"no app secret for WABA {waba_id}")
        return secret

    async def check_verify_token(self, token: str) -> bool:
        request = token_keeper_pb2.CheckVerifyTokenRequest(verify_token=token)
        resp = await call(
            "token-keeper CheckVerifyToken",
            self._clients.token_keeper.CheckVerifyToken(request, timeout=self._clients.timeout),
        )
        return bool(resp.valid)


__all__ = ["Credentials", "CredentialsCache", "TransientError", "UnknownChannel"]
