"""Who vouches for an install: Bitrix24's OAuth server, never the portal the request names.

An install payload (ONAPPINSTALL, or a UI app's page) is just a form anyone can post. Its access token is
checked with the OAuth server's ``app.info`` (``https://oauth.bitrix.info/rest/app.info?auth=<token>``,
DOCS settings/oauth: "to obtain a trusted value, use oauth.bitrix.info/rest/app.info"). Its answer must name
OUR client id and the claimed member_id; the portal's domain and REST endpoint are taken from it.

The field layout of that answer is UNCONFIRMED (docs/bitrix-ingress.md). We read ``client_id`` (or
``CODE``), ``member_id``, ``domain`` and ``client_endpoint`` at the top level or under ``install``. When
the answer does not name the portal, the refresh token is exchanged with our client_id/client_secret at the
token endpoint, whose answer is documented (bitrix24.md §5: member_id, client_endpoint); a refresh token of
another app fails there (invalid_client / invalid_grant). The exchanged pair then replaces the request's.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from zaptrix.egress import InsecureUrlError
from zaptrix.logging import get_logger

from bitrix_ingress.settings import WebSettings, check_portal_endpoint

log = get_logger(__name__)

MAX_ANSWER_BYTES = 64_000

# Refusal reasons: the fixed label set of zaptrix_install_refusals_total.
BAD_OAUTH = "bad_oauth"  # the OAuth server does not know the token (or answered nonsense)
OTHER_APP = "other_app"  # the token belongs to another app
MEMBER_MISMATCH = "member_mismatch"  # the token belongs to another portal
NOT_ADMIN = "not_admin"  # a user without administrator rights
ENDPOINT_NOT_ALLOWED = "endpoint_not_allowed"  # the portal's REST endpoint is not an allowed host
OAUTH_UNAVAILABLE = "oauth_unavailable"  # the OAuth server cannot be asked now (503, try again)
PORTAL_UNAVAILABLE = "portal_unavailable"  # the verified portal cannot be asked now (503, try again)
MALFORMED = "malformed"
RATE_LIMITED = "rate_limited"
NOT_CONFIGURED = "not_configured"  # ZAPTRIX_BITRIX_CLIENT_ID is not set: no install can be verified
BAD_SESSION = "bad_session"  # a settings page action without a valid session token (forged or expired)
REASONS = (
    BAD_OAUTH,
    OTHER_APP,
    MEMBER_MISMATCH,
    NOT_ADMIN,
    ENDPOINT_NOT_ALLOWED,
    OAUTH_UNAVAILABLE,
    PORTAL_UNAVAILABLE,
    MALFORMED,
    RATE_LIMITED,
    NOT_CONFIGURED,
    BAD_SESSION,
)


class Refused(Exception):
    """Verification failed. `reason` is one of REASONS; `detail` is for our logs only (it may carry
    remote error codes and host names, which an unauthenticated caller must never see)."""

    def __init__(self, reason: str, detail: str, status: int = 401) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.status = status


@dataclass
class VerifiedAuth:
    """What the OAuth server confirmed: tokens of our app on this portal."""

    client_id: str
    member_id: str
    domain: str
    client_endpoint: str
    access_token: str
    refresh_token: str
    expires_at: float
    exchanged: bool  # the tokens came from a refresh exchange (the request's refresh token is used up)


def _str(value: Any) -> str:
    return value.strip() if isinstance(value, str) else str(value) if isinstance(value, int) else ""


def _epoch(value: Any) -> float | None:
    """`expires` as unix seconds (int or digits) or an ISO 8601 date; None if unusable."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit() and len(text) < 12:
            return float(text)
        try:
            return datetime.fromisoformat(text).timestamp()
        except ValueError:
            return None
    return None


@dataclass
class _Claims:
    client_id: str
    member_id: str
    domain: str
    client_endpoint: str
    expires_at: float | None


def parse_claims(result: dict[str, Any], oauth_host: str, *, token_answer: bool = False) -> _Claims:
    """Read an app.info (or token) answer in either layout (top level, or the portal under `install`).
    A token answer's `domain` is always the auth server's (bitrix24.md §5): the portal's comes from
    its client_endpoint then."""
    install = result.get("install") if isinstance(result.get("install"), dict) else {}
    assert isinstance(install, dict)

    def pick(*keys: str) -> str:
        for source in (result, install):
            for key in keys:
                value = _str(source.get(key))
                if value:
                    return value
        return ""

    domain = _str(install.get("domain"))
    top_domain = _str(result.get("domain"))
    if not domain and not token_answer and top_domain.lower() != oauth_host:
        domain = top_domain
    endpoint = pick("client_endpoint")
    if not endpoint and domain:
        endpoint = f"https://{domain}/rest/"
    expires = _epoch(result.get("expires"))
    if expires is None:
        expires_in = _epoch(result.get("expires_in"))
        expires = time.time() + expires_in if expires_in is not None else None
    return _Claims(
        client_id=pick("client_id", "CLIENT_ID", "CODE"),
        member_id=pick("member_id", "MEMBER_ID"),
        domain=domain,
        client_endpoint=endpoint,
        expires_at=expires,
    )


class OAuthServer:
    """A small client of Bitrix24's OAuth server (app.info and the refresh exchange)."""

    def __init__(self, settings: WebSettings, client: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self.app_info_url = settings.bitrix_oauth_server_endpoint.rstrip("/") + "/app.info"
        self.token_url = settings.bitrix_oauth_url
        self.host = (urlsplit(settings.bitrix_oauth_server_endpoint).hostname or "").lower()
        self.client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(settings.bitrix_oauth_timeout_s), follow_redirects=False
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _get(self, url: str, params: dict[str, str], what: str) -> dict[str, Any]:
        try:
            async with self.client.stream("GET", url, params=params) as resp:
                body = b""
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_ANSWER_BYTES:
                        raise Refused(BAD_OAUTH, f"{what}: answer larger than {MAX_ANSWER_BYTES} bytes")
                status = resp.status_code
        except httpx.HTTPError as exc:
            raise Refused(OAUTH_UNAVAILABLE, f"{what}: {type(exc).__name__}", 503) from exc
        if status >= 500 or status == 429:
            raise Refused(OAUTH_UNAVAILABLE, f"{what}: HTTP {status}", 503)
        try:
            payload = json.loads(body)
        except ValueError:
            raise Refused(BAD_OAUTH, f"{what}: HTTP {status}, not JSON") from None
        if not isinstance(payload, dict):
            raise Refused(BAD_OAUTH, f"{what}: HTTP {status}, not an object")
        if status != 200 or payload.get("error"):
            code = _str(payload.get("error"))[:60] or f"http_{status}"
            if code in ("invalid_client",):
                raise Refused(OTHER_APP, f"{what}: {code}", 403)
            raise Refused(BAD_OAUTH, f"{what}: {code}")
        return payload

    async def app_info(self, access_token: str) -> _Claims:
        payload = await self._get(self.app_info_url, {"auth": access_token}, "oauth app.info")
        result = payload.get("result")
        if not isinstance(result, dict):
            raise Refused(BAD_OAUTH, "oauth app.info: no result object")
        return parse_claims(result, self.host)

    async def exchange(self, refresh_token: str) -> tuple[_Claims, str, str]:
        secret = self.settings.bitrix_client_secret
        if secret is None or not secret.get_secret_value():
            raise Refused(
                BAD_OAUTH, "the OAuth server did not name the portal and no client secret is set", 401
            )
        payload = await self._get(
            self.token_url,
            {
                "grant_type": "refresh_token",
                "client_id": self.settings.bitrix_client_id,
                "client_secret": secret.get_secret_value(),
                "refresh_token": refresh_token,
            },
            "oauth token",
        )
        access, refresh = _str(payload.get("access_token")), _str(payload.get("refresh_token"))
        if not access or not refresh:
            raise Refused(BAD_OAUTH, "oauth token: no access_token/refresh_token")
        claims = parse_claims(payload, self.host, token_answer=True)
        claims.client_id = self.settings.bitrix_client_id  # our credentials made the exchange
        return claims, access, refresh

    async def verify(
        self, *, member_id: str, access_token: str, refresh_token: str, claimed_expires_at: float
    ) -> VerifiedAuth:
        """Raises Refused unless the OAuth server vouches for a token of our app on `member_id`."""
        ours = self.settings.bitrix_client_id
        if not ours:
            raise Refused(NOT_CONFIGURED, "ZAPTRIX_BITRIX_CLIENT_ID is not set", 503)
        claims = await self.app_info(access_token)
        if claims.client_id and claims.client_id != ours:
            raise Refused(OTHER_APP, f"token of app {claims.client_id[:80]!r}", 403)
        if claims.member_id and claims.member_id != member_id:
            raise Refused(MEMBER_MISMATCH, f"token of portal {claims.member_id[:80]!r}", 403)
        exchanged = False
        if not (claims.client_id and claims.member_id and claims.client_endpoint):
            if not refresh_token:
                raise Refused(BAD_OAUTH, "the OAuth server did not name app and portal; no refresh token")
            claims, access_token, refresh_token = await self.exchange(refresh_token)
            exchanged = True
            if claims.member_id != member_id:
                raise Refused(MEMBER_MISMATCH, f"refresh token of portal {claims.member_id[:80]!r}", 403)
            if not claims.client_endpoint:
                raise Refused(BAD_OAUTH, "the OAuth server named no client_endpoint")
        try:
            check_portal_endpoint(claims.client_endpoint, self.settings)
        except InsecureUrlError as exc:
            raise Refused(ENDPOINT_NOT_ALLOWED, str(exc), 403) from exc
        now = time.time()
        # Never longer than an access token lives (1 h): an attacker-chosen expiry would stop refreshes.
        expires_at = min(
            claims.expires_at or now + 3600.0,
            claimed_expires_at if not exchanged else now + 3600,
            now + self.settings.install_max_token_ttl_s,
        )
        domain = claims.domain or (urlsplit(claims.client_endpoint).hostname or "")
        log.info("token verified by the oauth server", member_id=member_id, exchanged=exchanged)
        return VerifiedAuth(
            client_id=ours,
            member_id=member_id,
            domain=domain,
            client_endpoint=claims.client_endpoint,
            access_token=access_token,
            refresh_token=refresh_token,
            expires_at=expires_at,
            exchanged=exchanged,
        )
