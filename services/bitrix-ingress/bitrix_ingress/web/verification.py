"""Is an event's (member_id, application_token) a portal's own? token-keeper's verdict, cached briefly, and
the last verdict it gave for the pair as the answer while token-keeper cannot be asked.

Bitrix24 never resends an event, so a token-keeper outage (a rollout, a database failover) must not turn
every event into a 503. A pair token-keeper has verified keeps its last-known-good verdict for
``ZAPTRIX_VERIFY_STALE_S`` (24 h): used ONLY when token-keeper is unavailable, never in place of its
answer, and counted (``zaptrix_bitrix_verify_stale_total``). A pair token-keeper refused for a known portal
stays refused the same way (401). A pair it never answered for is not guessed at: the caller answers 503.
The application token changes only on a reinstall, which needs token-keeper too.

Keys are (member_id, SHA-256 of the token): no token is held in memory in clear. Both maps are bounded;
refusals have their own map, so a flood of wrong tokens evicts only other refusals, never a portal's
last-known-good pair.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from zaptrix.logging import get_logger
from zaptrix.rpc import RpcTransient
from zaptrix.ttlcache import TtlCache

from bitrix_ingress.deps import Deps
from bitrix_ingress.metrics import VERIFY_STALE
from bitrix_ingress.settings import WebSettings

log = get_logger(__name__)
REFUSAL_TTL_S = 5.0  # a fresh refusal is asked again this soon (an install may just have stored the token)
MAX_PAIRS = 10_000


@dataclass(frozen=True)
class Verdict:
    known_portal: bool
    valid: bool
    stale: bool = False  # token-keeper was unavailable: this is its last answer for the pair


class Verifications:
    def __init__(self, deps: Deps, settings: WebSettings) -> None:
        self.deps = deps
        self.fresh_s = settings.verify_cache_ttl_s
        self._fresh: TtlCache[tuple[str, str], Verdict] = TtlCache(MAX_PAIRS, self.fresh_s)
        self._last_good: TtlCache[tuple[str, str], Verdict] = TtlCache(MAX_PAIRS, settings.verify_stale_s)
        self._last_refused: TtlCache[tuple[str, str], Verdict] = TtlCache(MAX_PAIRS, settings.verify_stale_s)

    async def verify(self, member_id: str, application_token: str) -> Verdict:
        """token-keeper's verdict. Raises RpcFailed when token-keeper refuses the call itself (a deployment
        to fix), or is unavailable and has not answered for the pair within ZAPTRIX_VERIFY_STALE_S."""
        key = (member_id, hashlib.sha256(application_token.encode()).hexdigest())
        cached = self._fresh.get(key)
        if cached is not None:
            return cached
        try:
            answer = await self.deps.verify_application_token(member_id, application_token)
        except RpcTransient as exc:  # unavailable, overloaded, timed out: not an answer about the token
            last = self._last_good.get(key) or self._last_refused.get(key)
            if last is None:
                raise
            if last.valid:
                VERIFY_STALE.inc()
                log.warning(
                    "token-keeper unavailable: event taken on the last-known-good verification",
                    member_id=member_id,
                    error=exc.reason,
                )
            return Verdict(last.known_portal, last.valid, stale=True)
        verdict = Verdict(bool(answer.known_portal), bool(answer.valid))
        ttl = self.fresh_s if verdict.valid else min(REFUSAL_TTL_S, self.fresh_s)
        if ttl > 0:
            self._fresh.put(key, verdict, ttl)
        if verdict.valid:
            self._last_good.put(key, verdict)
            self._last_refused.invalidate(key)
        else:
            self._last_good.invalidate(key)
            if verdict.known_portal:  # an unknown portal may be installed by the time token-keeper is down
                self._last_refused.put(key, verdict)
        return verdict
