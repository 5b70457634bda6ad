"""The REST client both bitrix-ingress processes use for portals, behind the egress guard.

Every call to a portal endpoint goes through zaptrix.egress.GuardedTransport: https (plain http only for
the sandbox), a host under ZAPTRIX_BITRIX_PORTAL_HOST_SUFFIXES, a resolved address that is public (or in
ZAPTRIX_EGRESS_ALLOW_NETWORKS), the default port, and the connection pinned to the checked address. A
refusal is a PermanentBitrixError ``ENDPOINT_REFUSED`` (rest.py); redirects are never followed.
"""

from __future__ import annotations

import httpx
from zaptrix.egress import GuardedTransport, Resolver, system_resolver

from bitrix_ingress.bitrix_rest.client import BitrixRest
from bitrix_ingress.settings import BitrixCommonSettings

# The pool BitrixRest had before the guard (the client's own limits do not apply to a given transport).
_LIMITS = httpx.Limits(max_connections=256, max_keepalive_connections=64, keepalive_expiry=30)


def portal_rest(
    settings: BitrixCommonSettings, *, timeout_s: float, resolver: Resolver = system_resolver
) -> BitrixRest:
    transport = GuardedTransport(
        settings.egress_policy(),
        settings.portal_allowlist(),
        "portal_rest",
        limits=_LIMITS,
        resolver=resolver,
    )
    return BitrixRest(
        timeout_s=timeout_s,
        connect_timeout_s=settings.bitrix_rest_connect_timeout_s,
        body=settings.bitrix_rest_body,
        transport=transport,
    )
