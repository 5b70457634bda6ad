"""Bitrix24 OAuth refresh (grant_type=refresh_token) against the documented token endpoint.

Documented contract (bitrix24.md §5, docs/platform-sources.md): ``GET https://oauth.bitrix.info/oauth/token/
?grant_type=refresh_token&client_id=…&client_secret=…&refresh_token=…`` answers ``access_token``,
``refresh_token`` (keep it instead of the old one), ``expires``/``expires_in``, ``client_endpoint``,
``server_endpoint``, ``member_id``, ``scope``; errors are ``{"error": "...", "error_description": "..."}``,
``invalid_grant`` meaning the refresh token is gone for good (re-authorise).

Secrets in the query string must not leak: the global httpx instrumentation records the full URL (it only
redacts a fixed list of parameter names), and httpx logs request URLs at INFO. This client therefore opts out
of that instrumentation, opens its own CLIENT span with the URL stripped of its query, and httpx's loggers are
kept at WARNING.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import SecretStr
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)
from zaptrix.egress import InsecureUrlError, require_https
from zaptrix.logging import get_logger
from zaptrix.metrics import EXTERNAL_CALLS, EXTERNAL_LATENCY

from token_keeper.settings import TokenKeeperSettings

log = get_logger(__name__)
tracer = trace.get_tracer(__name__)

for _name in ("httpx", "httpcore"):  # they log request URLs, which carry the secrets of a GET refresh
    logging.getLogger(_name).setLevel(logging.WARNING)

_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
PERMANENT_REAUTH_ERRORS = frozenset({"invalid_grant", "invalid_client"})


class OAuthError(Exception):
    """A refresh failed. `code` is Bitrix24's error code (or ours); messages never carry secrets."""

    def __init__(self, code: str, description: str = "") -> None:
        self.code = code
        self.description = description
        super().__init__(f"{code}: {description}" if description else code)


class NeedsReauth(OAuthError):
    """invalid_grant / invalid_client: no retry can help; an operator must re-authorise the portal."""


class OAuthRejected(OAuthError):
    """Another 4xx (invalid_request, PAYMENT_REQUIRED, …): not retried now, not a reason to drop the portal."""


class OAuthUnavailable(OAuthError):
    """Timeouts, connection errors, 5xx, 429 after the bounded retries."""


class _Transient(OAuthError):
    pass


@dataclass(frozen=True, slots=True)
class TokenGrant:
    access_token: SecretStr
    refresh_token: SecretStr
    expires_at: datetime
    client_endpoint: str
    server_endpoint: str
    scope: str
    member_id: str


def _strip_query(url: str) -> str:
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc.rsplit("@", 1)[-1], p.path, "", ""))


def _scrub(text: str, secrets: list[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "[redacted]")
    return text[:200]


class BitrixOAuthClient:
    def __init__(self, settings: TokenKeeperSettings, http: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self.url = settings.bitrix_oauth_url
        self._http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(settings.bitrix_oauth_timeout_s), follow_redirects=False, trust_env=False
        )
        self._owns_http = http is None
        self._uninstrument(self._http)

    @staticmethod
    def _uninstrument(client: httpx.AsyncClient) -> None:
        """Undo the global httpx instrumentation for this client (it would record the secret query string)."""
        try:
            from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

            HTTPXClientInstrumentor.uninstrument_client(client)
        except Exception:  # not instrumented (tests, tools): nothing to undo
            log.debug("httpx client not instrumented")

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def refresh(
        self, *, client_id: str, client_secret: SecretStr, refresh_token: SecretStr
    ) -> TokenGrant:
        """One refresh with bounded retries of transient failures. Raises an OAuthError subclass."""
        s = self.settings
        started = time.monotonic()
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Transient),
            stop=stop_after_attempt(s.oauth_attempts)
            | stop_after_delay(s.oauth_budget_s - s.bitrix_oauth_timeout_s),
            wait=wait_exponential_jitter(multiplier=0.2, max=2.0, jitter=0.3),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    remaining = s.oauth_budget_s - (time.monotonic() - started)
                    timeout = max(0.5, min(s.bitrix_oauth_timeout_s, remaining))
                    return await self._attempt(client_id, client_secret, refresh_token, timeout)
        except _Transient as exc:
            raise OAuthUnavailable(exc.code, exc.description) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(
        self, client_id: str, client_secret: SecretStr, refresh_token: SecretStr, timeout_s: float
    ) -> TokenGrant:
        params = {
            "grant_type": "refresh_token",
            "client_id": client_id,
            "client_secret": client_secret.get_secret_value(),
            "refresh_token": refresh_token.get_secret_value(),
        }
        secrets = [params["client_secret"], params["refresh_token"]]
        self._uninstrument(self._http)  # again: instrumentation may have been enabled after __init__
        method = self.settings.bitrix_oauth_method
        with tracer.start_as_current_span(
            f"{method} oauth/token",
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": method,
                "url.full": _strip_query(self.url),
                "server.address": urlsplit(self.url).hostname or "",
                "zaptrix.oauth.grant_type": "refresh_token",
            },
        ) as span:
            t0 = time.monotonic()
            outcome = "ok"
            try:
                if method == "GET":
                    resp = await self._http.get(self.url, params=params, timeout=timeout_s)
                else:
                    resp = await self._http.post(self.url, data=params, timeout=timeout_s)
                span.set_attribute("http.response.status_code", resp.status_code)
                return self._parse(resp, secrets)
            except httpx.TimeoutException:
                outcome = "timeout"
                raise _Transient("timeout", f"no answer within {timeout_s:.1f}s") from None
            except httpx.HTTPError as exc:
                outcome = "connection_error"
                raise _Transient("connection_error", type(exc).__name__) from None
            except OAuthError as exc:
                outcome = exc.code
                raise
            finally:
                EXTERNAL_CALLS.labels("bitrix24_oauth", "refresh_token", outcome).inc()
                EXTERNAL_LATENCY.labels("bitrix24_oauth", "refresh_token").observe(time.monotonic() - t0)
                if outcome != "ok":
                    span.set_status(Status(StatusCode.ERROR, outcome))

    def _parse(self, resp: httpx.Response, secrets: list[str]) -> TokenGrant:
        body: Any
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code >= 500 or resp.status_code == 429:
            raise _Transient(f"http_{resp.status_code}", _error_text(body, secrets))
        if not isinstance(body, dict):
            raise OAuthRejected(f"http_{resp.status_code}", "answer is not a JSON object")
        error = body.get("error")
        if error or resp.status_code >= 400:
            code = str(error) if error and _ERROR_CODE.match(str(error)) else f"http_{resp.status_code}"
            description = _error_text(body, secrets)
            if code in PERMANENT_REAUTH_ERRORS:
                raise NeedsReauth(code, description)
            raise OAuthRejected(code, description)
        access, refresh = body.get("access_token"), body.get("refresh_token")
        if not isinstance(access, str) or not access or not isinstance(refresh, str) or not refresh:
            raise OAuthRejected("bad_response", "access_token or refresh_token missing")
        now = datetime.now(UTC)
        expires_at = now + timedelta(seconds=3600)
        expires_in = body.get("expires_in")
        expires = body.get("expires")
        if isinstance(expires_in, int | float | str) and str(expires_in).isdigit():
            expires_at = now + timedelta(seconds=int(expires_in))  # our clock: immune to clock skew
        elif isinstance(expires, int | float | str) and str(expires).isdigit():
            expires_at = datetime.fromtimestamp(int(expires), UTC)
        return TokenGrant(
            access_token=SecretStr(access),
            refresh_token=SecretStr(refresh),
            expires_at=expires_at,
            client_endpoint=self._endpoint(body.get("client_endpoint")),
            server_endpoint=self._endpoint(body.get("server_endpoint")),
            scope=str(body.get("scope") or ""),
            member_id=str(body.get("member_id") or ""),
        )

    def _endpoint(self, value: Any) -> str:
        """An endpoint from the answer, or "" when missing or not acceptable (then the stored one is kept)."""
        if not isinstance(value, str) or not value:
            return ""
        try:
            require_https(value, self.settings, what="endpoint")
        except InsecureUrlError:
            return ""
        return value


def _error_text(body: Any, secrets: list[str]) -> str:
    if isinstance(body, dict):
        desc = body.get("error_description") or body.get("error") or ""
        return _scrub(str(desc), secrets)
    return ""
