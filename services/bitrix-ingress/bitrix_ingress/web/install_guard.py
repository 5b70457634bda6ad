"""Refusing install and settings requests: one generic answer per status, a metric with a fixed label set,
a WARNING log with the details, and a per-source limit on refusals.

Nothing a remote host said (error codes, host names) reaches an unauthenticated caller: that would make
the install route an oracle for whatever host an attacker makes us contact (review M2).
"""

from __future__ import annotations

from collections import OrderedDict

from aiolimiter import AsyncLimiter
from prometheus_client import Counter
from sanic import HTTPResponse, Request
from zaptrix.logging import get_logger

from bitrix_ingress.settings import WebSettings
from bitrix_ingress.web.http import problem
from bitrix_ingress.web.oauth_check import RATE_LIMITED, REASONS, OAuthServer, Refused

log = get_logger(__name__)

ROUTES = ("install", "settings", "templates")
REFUSALS = Counter(
    "zaptrix_install_refusals_total",
    "Install/settings requests refused before anything was stored, by route and reason",
    ["route", "reason"],
)
for _route in ROUTES:
    for _reason in REASONS:
        REFUSALS.labels(_route, _reason)

_GENERIC = {
    401: "not authorised",
    403: "refused",
    429: "too many refused requests, try again later",
    503: "cannot verify the request now, try again",
}


class SourceLimiter:
    """At most `per_minute` refusals per source address (a bounded LRU of leaky buckets); a source over the
    limit is answered 429 before any verification. Only refusals count, so Bitrix24's queue servers, which
    post every portal's genuine installs from a few addresses, are never slowed down."""

    def __init__(self, per_minute: float, max_sources: int = 10_000) -> None:
        self.per_minute = per_minute
        self.max_sources = max_sources
        self._buckets: OrderedDict[str, AsyncLimiter] = OrderedDict()

    def blocked(self, source: str) -> bool:
        bucket = self._buckets.get(source)
        return bucket is not None and not bucket.has_capacity()

    async def charge(self, source: str) -> None:
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = self._buckets[source] = AsyncLimiter(self.per_minute, 60.0)
            while len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
        self._buckets.move_to_end(source)
        if bucket.has_capacity():
            await bucket.acquire()  # immediate when there is capacity


class InstallGuard:
    """The OAuth server that vouches for installs, and the per-source limit on refusals."""

    def __init__(self, settings: WebSettings) -> None:
        self.oauth = OAuthServer(settings)
        self.limiter = SourceLimiter(settings.install_refusals_per_minute)

    def rate_limited(self, request: Request, route: str) -> HTTPResponse | None:
        if not self.limiter.blocked(source_of(request)):
            return None
        REFUSALS.labels(route, RATE_LIMITED).inc()
        log.warning(
            "install/settings request refused", route=route, reason=RATE_LIMITED, source=source_of(request)
        )
        return problem(429, _GENERIC[429])

    async def refuse(self, request: Request, route: str, exc: Refused, member_id: str = "") -> HTTPResponse:
        """Count, log (with the detail) and answer generically."""
        REFUSALS.labels(route, exc.reason).inc()
        log.warning(
            "install/settings request refused",
            route=route,
            reason=exc.reason,
            detail=exc.detail,
            member_id=member_id[:64],
            source=source_of(request),
        )
        if exc.status != 503:  # an outage is not the caller's fault
            await self.limiter.charge(source_of(request))
        status = exc.status if exc.status in _GENERIC else 401
        return problem(status, _GENERIC[status])


def source_of(request: Request) -> str:
    # remote_addr honours the proxy settings (FORWARDED_SECRET / REAL_IP_HEADER / PROXIES_COUNT).
    return str(request.remote_addr or request.ip or "unknown")
