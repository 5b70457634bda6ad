"""REST calls on behalf of a portal: token from token-keeper, pacing, refresh on rejection, retries.

For every request: take the portal's access token and REST endpoint (client_endpoint) from
token-keeper (cached until a minute before expiry), wait for the portal's pacer, call. Then:

- ``expired_token``/``invalid_token``/``NO_AUTH_FOUND`` -> ReportTokenRejected (token-keeper
  refreshes once across all replicas) and retry once with the token it returns;
- ``QUERY_LIMIT_EXCEEDED`` -> pause the portal (backoff + jitter, Retry-After) and retry in place,
  for at most ``rate_limit_max_wait_s``; it is a signal to slow down, not a failure;
- ``OPERATION_TIME_LIMIT`` -> no retry in place (the method stays blocked until ``operating_reset_at``,
  minutes away): the error goes up with that wait and the event takes the retry topic; the portal's
  other methods go on; until then that method is not asked again (blocks.py);
- ``OVERLOAD_LIMIT`` (Bitrix24's manual block of the portal's REST API) -> no retry in place, and nothing
  is asked of the portal for ``overload_wait_s`` (blocks.py);
- 5xx, timeouts, bad gateways -> a bounded number of attempts with exponential backoff and jitter
  (tenacity); then the error goes up and the event takes the retry topic;
- anything permanent goes up at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, TypeVar

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter
from zaptrix.egress import InsecureUrlError
from zaptrix.logging import get_logger
from zaptrix.rpc import RpcNotFound

from bitrix_ingress.bitrix_rest.blocks import OVERLOAD_WAIT_S, Blocks
from bitrix_ingress.bitrix_rest.client import (
    BatchResult,
    BitrixError,
    BitrixRest,
    MethodBlocked,
    Overloaded,
    PermanentBitrixError,
    QueryLimitExceeded,
    TokenError,
    TransientBitrixError,
)
from bitrix_ingress.bitrix_rest.pacing import PacerRegistry, PortalPacer
from bitrix_ingress.deps import Deps
from bitrix_ingress.settings import BitrixCommonSettings, check_portal_endpoint

log = get_logger(__name__)
T = TypeVar("T")


class PortalUnknown(PermanentBitrixError):
    """token-keeper has no such portal (not installed, or uninstalled)."""


class TokenRejectedTwice(TransientBitrixError):
    """Even the token token-keeper handed out after a refresh was refused."""


class RateLimitWaitExceeded(TransientBitrixError):
    """QUERY_LIMIT_EXCEEDED for longer than we wait in place: retry the event later."""


@dataclass(frozen=True)
class Token:
    member_id: str
    access_token: str
    endpoint: str
    expires_at: float  # epoch seconds


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, TransientBitrixError) and not isinstance(
        exc,
        QueryLimitExceeded
        | RateLimitWaitExceeded
        | TokenError
        | TokenRejectedTwice
        | MethodBlocked
        | Overloaded,
    )


@dataclass(eq=False)
class PortalClient:
    """Calls on behalf of a portal: its token from token-keeper, its pacer, a refresh on rejection, retries."""

    deps: Deps
    rest: BitrixRest
    pacers: PacerRegistry
    settings: BitrixCommonSettings
    _: KW_ONLY
    attempts: int = 3
    rate_limit_max_wait_s: float = 30.0
    overload_wait_s: float = OVERLOAD_WAIT_S
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 5.0
    # Background calls (the history import) yield to live ones at the portal's pacer (pacing.py).
    background: bool = False
    _tokens: dict[str, Token] = field(default_factory=dict, init=False)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict, init=False)
    blocks: Blocks = field(init=False)

    def __post_init__(self) -> None:
        self.blocks = Blocks(overload_wait_s=self.overload_wait_s)

    # --- tokens -------------------------------------------------------------------------------

    def _to_token(self, member_id: str, msg: Any) -> Token:
        endpoint = msg.client_endpoint
        try:
            check_portal_endpoint(endpoint, self.settings)
        except InsecureUrlError as exc:
            raise PermanentBitrixError("BAD_CLIENT_ENDPOINT", str(exc)) from exc
        expires = msg.expires_at.seconds if msg.HasField("expires_at") else time.time() + 300
        return Token(member_id, msg.access_token, endpoint, float(expires))

    async def token(self, member_id: str) -> Token:
        cached = self._tokens.get(member_id)
        if cached and cached.expires_at - time.time() > 60:
            return cached
        lock = self._locks.setdefault(member_id, asyncio.Lock())
        async with lock:
            cached = self._tokens.get(member_id)
            if cached and cached.expires_at - time.time() > 60:
                return cached
            try:
                msg = await self.deps.get_access_token(member_id)
            except RpcNotFound as exc:
                raise PortalUnknown("PORTAL_UNKNOWN", f"portal {member_id} is not installed") from exc
            token = self._to_token(member_id, msg)
            self._tokens[member_id] = token
            return token

    async def _rejected(self, token: Token, error: TokenError) -> Token:
        lock = self._locks.setdefault(token.member_id, asyncio.Lock())
        async with lock:  # concurrent calls (the consumer, the offline reconciler) report a token once
            current = self._tokens.get(token.member_id)
            if current is not None and current.access_token != token.access_token:
                return current  # another call of this process already had it replaced
            log.warning("bitrix24 refused the access token", member_id=token.member_id, error=error.code)
            self._tokens.pop(token.member_id, None)
            code = "expired_token" if error.code == "expired_token" else "invalid_token"
            try:
                msg = await self.deps.report_token_rejected(token.member_id, token.access_token, code)
            except RpcNotFound as exc:
                raise PortalUnknown("PORTAL_UNKNOWN", f"portal {token.member_id} is not installed") from exc
            fresh = self._to_token(token.member_id, msg)
            self._tokens[token.member_id] = fresh
            return fresh

    def forget_token(self, member_id: str) -> None:
        self._tokens.pop(member_id, None)

    # --- calls --------------------------------------------------------------------------------

    async def call(self, member_id: str, method: str, params: Mapping[str, Any]) -> Any:
        self.blocks.refuse(member_id, method)
        try:
            result = await self._run(
                member_id, lambda tok: self.rest.call(tok.endpoint, tok.access_token, method, params)
            )
        except BitrixError as exc:
            self._blocked(member_id, [exc])
            raise
        self.blocks.lifted(member_id)
        return result

    async def batch(
        self, member_id: str, commands: Mapping[str, tuple[str, Mapping[str, Any]]]
    ) -> BatchResult:
        """One batch request; commands of a blocked method (or all, on a blocked portal) are answered
        here with their block's error and not sent."""
        allowed, refused = self.blocks.split(member_id, commands)
        if not allowed:
            return refused
        try:
            result = await self._run(
                member_id, lambda tok: self.rest.batch(tok.endpoint, tok.access_token, allowed)
            )
        except BitrixError as exc:
            self._blocked(member_id, [exc])
            raise
        self.blocks.lifted(member_id)
        self._blocked(member_id, list(result.errors.values()))
        result.errors.update(refused.errors)
        return result

    def _blocked(self, member_id: str, errors: list[BitrixError]) -> None:
        """Remember the blocks Bitrix24 reported (blocks.py); say so once per block."""
        for exc in errors:
            if not self.blocks.note(member_id, exc):
                continue
            if isinstance(exc, Overloaded):
                log.error(
                    "Bitrix24 blocked the portal's REST API for this app (OVERLOAD_LIMIT, a manual block that "
                    "Bitrix24 support lifts); nothing is asked of the portal until the wait is over",
                    member_id=member_id,
                    wait_s=round(exc.retry_after or 0),
                )
            else:
                log.warning(
                    "a method is blocked by its operating time (OPERATION_TIME_LIMIT); not asked again "
                    "until operating_reset_at",
                    member_id=member_id,
                    method=exc.method,
                    wait_s=round(exc.retry_after or 0),
                )

    async def call_with_token(
        self, member_id: str, token: Token, method: str, params: Mapping[str, Any]
    ) -> Any:
        """A paced call with a caller-supplied token (e.g. the admin's token of a placement)."""
        pacer = self.pacers.get(member_id)  # member_id maybe unverified (install): the registry is an LRU
        self._refuse_long_pause(pacer, member_id, method)
        await pacer.acquire()
        return await self.rest.call(token.endpoint, token.access_token, method, params)

    async def room(self, member_id: str) -> None:
        """Until the portal's pacer would let a request go now (PortalPacer.room). A portal without a pacer
        yet (its first request asks token-keeper first) has room; through a pause longer than we wait in
        place it does not wait: the request itself then fails at once, as it would have."""
        pacer = self.pacers.peek(member_id)
        if pacer is not None and pacer.paused_for() <= self.rate_limit_max_wait_s:
            await pacer.room(background=self.background)

    def _refuse_long_pause(self, pacer: PortalPacer, member_id: str, method: str) -> None:
        """A portal paused for longer than we wait in place: the event goes to the retry topic now instead
        of holding the whole poll batch (and the consumer's poll interval) behind one portal."""
        paused = pacer.paused_for()
        if paused > self.rate_limit_max_wait_s:
            raise RateLimitWaitExceeded(
                "QUERY_LIMIT_EXCEEDED",
                f"portal {member_id} paused for another {paused:.0f} s",
                method=method,
                retry_after=paused,
            )

    async def _run(self, member_id: str, fn: Callable[[Token], Awaitable[T]]) -> T:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential_jitter(
                multiplier=self.backoff_initial_s, max=self.backoff_max_s, jitter=self.backoff_initial_s
            ),
            retry=retry_if_exception(_retryable),
            reraise=True,
        ):
            with attempt:
                return await self._once(member_id, fn)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(self, member_id: str, fn: Callable[[Token], Awaitable[T]]) -> T:
        """One logical call: refreshes the token at most once and waits out rate limiting."""
        deadline = time.monotonic() + self.rate_limit_max_wait_s
        refreshed = False
        token = await self.token(member_id)  # first: unknown portals get no pacer
        pacer = self.pacers.get(member_id)
        while True:
            self._refuse_long_pause(pacer, member_id, "")
            await pacer.acquire(background=self.background)
            try:
                result = await fn(token)
            except TokenError as exc:
                if refreshed:
                    raise TokenRejectedTwice(
                        exc.code, "refused again after a refresh", method=exc.method
                    ) from exc
                token = await self._rejected(token, exc)
                refreshed = True
                continue
            except QueryLimitExceeded as exc:
                delay = pacer.slow_down(exc.retry_after)
                log.warning("portal rate limited, slowing down", member_id=member_id, pause_s=round(delay, 2))
                if time.monotonic() + delay > deadline:
                    raise RateLimitWaitExceeded(
                        exc.code,
                        "still rate limited after waiting in place",
                        method=exc.method,
                        retry_after=delay,
                    ) from exc
                continue  # acquire() waits until the pause is over
            pacer.succeeded()
            return result
