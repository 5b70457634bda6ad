"""A small typed Bitrix24 REST client: one httpx.AsyncClient per process, typed errors, metrics.

``call(endpoint, token, method, params)`` POSTs to ``<client_endpoint><method>`` with the access token
as the ``auth`` parameter of the body (never in the URL, so it stays out of access logs) and returns
the ``result`` member, or raises a :class:`BitrixError` subclass classified from the documented
error codes (DOCS limits.md, oauth/error-codes.md, imconnector method pages):

| class | codes | meaning for the caller |
|---|---|---|
| ExpiredToken | 401 expired_token | ReportTokenRejected, then retry once |
| InvalidToken | 401 invalid_token, NO_AUTH_FOUND | same |
| QueryLimitExceeded | 503 QUERY_LIMIT_EXCEEDED | slow the portal down and retry in place |
| MethodBlocked | 429 OPERATION_TIME_LIMIT | that method is blocked until operating_reset_at |
| Overloaded | 503 OVERLOAD_LIMIT | manual block by Bitrix24: retry much later |
| ServerError / TransportError / BadResponse | 5xx, timeouts, non-JSON | transient |
| ArgumentError | 400 ERROR_ARGUMENT, IMCONNECTOR_*, other 4xx codes | permanent |
| NotActiveLine | NOT_ACTIVE_LINE | permanent |
| WrongAuthType | 403 WRONG_AUTH_TYPE | permanent (imconnector.* needs app context) |
| AccessDenied | insufficient_scope, ACCESS_DENIED, user_access_error, ... | permanent |
| MethodNotFound | ERROR_METHOD_NOT_FOUND | permanent |

OpenTelemetry CLIENT spans come from the httpx instrumentation (zaptrix.telemetry); the token never
appears in a span because it travels in the body.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from zaptrix.delays import parse_retry_after, seconds_until
from zaptrix.egress import EgressRefused
from zaptrix.errors import PermanentError, TransientError
from zaptrix.metrics import EXTERNAL_CALLS, EXTERNAL_LATENCY

from bitrix_ingress.formparse import as_list, build_query

PLATFORM = "bitrix24"


class BitrixError(Exception):
    """An error answered by Bitrix24 (or on the way there). ``str()`` never contains a token.
    Raised only as TransientBitrixError or PermanentBitrixError, which the consumer understands."""

    permanent: bool
    reason: str
    retry_after: float | None

    def __init__(
        self,
        code: str,
        description: str = "",
        *,
        status: int | None = None,
        method: str = "",
        retry_after: float | None = None,
    ) -> None:
        self.code = code
        self.description = description[:500]
        self.status = status
        self.method = method
        self.retry_after = retry_after
        where = f"{method}: " if method else ""
        shown_status = f" (HTTP {status})" if status else ""
        desc = f": {self.description}" if self.description else ""
        self.reason = f"{where}{code}{shown_status}{desc}"
        Exception.__init__(self, self.reason)  # not cooperative: the attributes above are the whole state


class TransientBitrixError(BitrixError, TransientError):
    """Worth retrying later."""


class PermanentBitrixError(BitrixError, PermanentError):
    """Will fail the same way again: dead-letter with the reason."""


class TokenError(TransientBitrixError):
    """The access token was refused; the caller refreshes it through token-keeper."""


class ExpiredToken(TokenError):
    pass


class InvalidToken(TokenError):
    pass


class QueryLimitExceeded(TransientBitrixError):
    pass


class MethodBlocked(TransientBitrixError):
    pass


class Overloaded(TransientBitrixError):
    pass


class ServerError(TransientBitrixError):
    pass


class TransportError(TransientBitrixError):
    pass


class BadResponse(TransientBitrixError):
    pass


class ArgumentError(PermanentBitrixError):
    pass


class NotActiveLine(PermanentBitrixError):
    pass


class WrongAuthType(PermanentBitrixError):
    pass


class AccessDenied(PermanentBitrixError):
    pass


class MethodNotFound(PermanentBitrixError):
    pass


_BY_CODE: dict[str, type[BitrixError]] = {
    "expired_token": ExpiredToken,
    "invalid_token": InvalidToken,
    "NO_AUTH_FOUND": InvalidToken,
    "QUERY_LIMIT_EXCEEDED": QueryLimitExceeded,
    "OPERATION_TIME_LIMIT": MethodBlocked,
    "OVERLOAD_LIMIT": Overloaded,
    "INTERNAL_SERVER_ERROR": ServerError,
    "ERROR_ARGUMENT": ArgumentError,
    "ERROR_CORE": ServerError,
    "NOT_ACTIVE_LINE": NotActiveLine,
    "WRONG_AUTH_TYPE": WrongAuthType,
    "insufficient_scope": AccessDenied,
    "invalid_scope": AccessDenied,
    "ACCESS_DENIED": AccessDenied,
    "ACCESS_ERROR": AccessDenied,
    "INVALID_CREDENTIALS": AccessDenied,
    "user_access_error": AccessDenied,
    "PAYMENT_REQUIRED": AccessDenied,
    "INVALID_REQUEST": ArgumentError,
    "ERROR_METHOD_NOT_FOUND": MethodNotFound,
    "ERROR_BATCH_METHOD_NOT_ALLOWED": MethodNotFound,
    "ERROR_BATCH_LENGTH_EXCEEDED": ArgumentError,
    "WRONG_APP_ID": AccessDenied,
}


def error_class(code: str, status: int | None = None) -> type[BitrixError]:
    """The typed error for a Bitrix24 error code (HTTP status decides for codes we do not know)."""
    cls = _BY_CODE.get(code) or _BY_CODE.get(code.upper()) or _BY_CODE.get(code.lower())
    if cls is None:
        if code.upper().startswith(("IMCONNECTOR_", "ERROR_IMCONNECTOR_", "CONNECTOR_")):
            cls = ArgumentError
        elif status is not None and (status >= 500 or status == 408):
            cls = ServerError
        elif status == 401:
            cls = InvalidToken
        elif status == 429:
            cls = MethodBlocked
        elif status is None:
            # a nested (batch) error without an HTTP status: unknown codes are not retried forever
            cls = ArgumentError
        else:
            cls = ArgumentError
    return cls


def _retry_after(resp: httpx.Response, payload: Any, code: str) -> float | None:
    """The peer's wait, finite and at most MAX_DELAY_S (a hostile "inf" or "1e9" must not park us)."""
    delay = parse_retry_after(resp.headers.get("retry-after"))
    if delay is not None:
        return delay
    if code == "OPERATION_TIME_LIMIT" and isinstance(payload, dict):
        return _until_reset(payload.get("time"))
    return None


def _keyed(part: Any) -> Any:
    """A batch answer's per-command map (PHP serialises an empty or numbered one as a list)."""
    if isinstance(part, list):
        return {str(i): v for i, v in enumerate(part)}
    return part or {}


def _until_reset(timing: Any) -> float | None:
    """Seconds until a `time` block's operating_reset_at (when a blocked method is usable again)."""
    if isinstance(timing, dict) and timing.get("operating_reset_at"):
        return seconds_until(timing["operating_reset_at"])
    return None


MAX_RESPONSE_BYTES = 8 * 1024 * 1024  # real answers (batch of 50 included) are far smaller
_KNOWN_OUTCOMES = frozenset(
    {*_BY_CODE, "ok", "timeout", "transport_error", "UNKNOWN", "NOT_EXECUTED", "BAD_RESPONSE"}
    | {"BAD_BATCH_RESPONSE", "RESPONSE_TOO_LARGE"}
)
_HTTP_CODE = re.compile(r"HTTP_[1-5]\d\d")


def outcome_label(code: str) -> str:
    """A bounded metric label for a remote error code: a documented code, HTTP_<status>, else "other"."""
    if code in _KNOWN_OUTCOMES or _HTTP_CODE.fullmatch(code):
        return code
    return "other"


@dataclass
class BatchResult:
    """Per sub-command: its result, or its typed error."""

    results: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, BitrixError] = field(default_factory=dict)


class BitrixRest:
    """The process-wide HTTP client for Bitrix24 portals (connection pooling across portals)."""

    def __init__(
        self,
        *,
        timeout_s: float = 65.0,
        connect_timeout_s: float = 5.0,
        body: Literal["json", "form"] = "json",
        transport: httpx.AsyncBaseTransport | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self.body = body
        self.max_response_bytes = max_response_bytes
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64, keepalive_expiry=30),
            follow_redirects=False,
            trust_env=False,  # an environment proxy would bypass the egress guard's transport
            transport=transport,
            headers={"User-Agent": "zaptrix-bitrix-ingress/0.1", "Accept": "application/json"},
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    @staticmethod
    def method_url(endpoint: str, method: str) -> str:
        return endpoint.rstrip("/") + "/" + method

    async def call(self, endpoint: str, token: str, method: str, params: Mapping[str, Any]) -> Any:
        """POST one method; returns its ``result``."""
        payload = await self._post(endpoint, token, method, params)
        return payload.get("result")

    async def call_full(self, endpoint: str, token: str, method: str, params: Mapping[str, Any]) -> Any:
        """POST one method; returns the whole response document (``result``, ``time``, ``total``...)."""
        return await self._post(endpoint, token, method, params)

    async def batch(
        self,
        endpoint: str,
        token: str,
        commands: Mapping[str, tuple[str, Mapping[str, Any]]],
        *,
        halt: bool = False,
    ) -> BatchResult:
        """One ``batch`` request (one hit on the portal's leaky bucket) with up to 50 sub-commands."""
        if not commands or len(commands) > 50:
            raise ValueError("batch takes 1..50 commands")
        cmd = {key: f"{method}?{build_query(params)}" for key, (method, params) in commands.items()}
        payload = await self._post(endpoint, token, "batch", {"halt": 1 if halt else 0, "cmd": cmd})
        outer = payload.get("result")
        if not isinstance(outer, dict):
            raise BadResponse("BAD_BATCH_RESPONSE", "batch result is not an object", method="batch")
        results = _keyed(outer.get("result"))
        errors = _keyed(outer.get("result_error"))
        times = _keyed(outer.get("result_time"))
        out = BatchResult()
        for key, (method, _) in commands.items():
            if key in errors:
                err = errors[key]
                if isinstance(err, dict):
                    code = str(err.get("error") or "UNKNOWN")
                    desc = str(err.get("error_description") or "")
                else:
                    code, desc = "UNKNOWN", str(err)
                # a nested call blocked by its method's operating time: its result_time says until when
                wait = _until_reset(times.get(key)) if code == "OPERATION_TIME_LIMIT" else None
                out.errors[key] = error_class(code)(code, desc, method=method, retry_after=wait)
                EXTERNAL_CALLS.labels(PLATFORM, method, outcome_label(code)).inc()
            elif key in results:
                out.results[key] = results[key]
                EXTERNAL_CALLS.labels(PLATFORM, method, "ok").inc()
            else:  # halted or skipped by Bitrix24
                out.errors[key] = ServerError("NOT_EXECUTED", "sub-command was not executed", method=method)
        return out

    async def _post(
        self, endpoint: str, token: str, method: str, params: Mapping[str, Any]
    ) -> dict[str, Any]:
        url = self.method_url(endpoint, method)
        body = {**params, "auth": token}
        started = time.perf_counter()
        outcome = "transport_error"
        try:
            try:
                if self.body == "json":
                    request = self._http.build_request("POST", url, json=body)
                else:
                    request = self._http.build_request(
                        "POST",
                        url,
                        content=build_query(body).encode(),
                        headers={"Content-Type": "application/x-www-form-urlencoded"},
                    )
                resp = await self._http.send(request, stream=True)
                try:
                    content = await self._read_capped(resp, method)
                finally:
                    await resp.aclose()
            except EgressRefused as exc:  # an internal or foreign endpoint: never worth a retry
                outcome = "endpoint_refused"
                raise PermanentBitrixError("ENDPOINT_REFUSED", exc.reason, method=method) from None
            except httpx.TimeoutException as exc:
                outcome = "timeout"
                raise TransportError("TIMEOUT", type(exc).__name__, method=method) from exc
            except httpx.HTTPError as exc:
                raise TransportError("TRANSPORT_ERROR", type(exc).__name__, method=method) from exc
            except BitrixError as exc:
                outcome = exc.code
                raise
            payload = self._decode(resp, content, method)
            err = payload.get("error")
            if err or resp.status_code >= 400:
                code = str(err or f"HTTP_{resp.status_code}")
                outcome = outcome_label(code)
                raise error_class(code, resp.status_code)(
                    code,
                    str(payload.get("error_description") or ""),
                    status=resp.status_code,
                    method=method,
                    retry_after=_retry_after(resp, payload, code),
                )
            outcome = "ok"
            return payload
        finally:
            # one sample per HTTP request; batch sub-calls are counted under their own method names too
            EXTERNAL_LATENCY.labels(PLATFORM, method).observe(time.perf_counter() - started)
            EXTERNAL_CALLS.labels(PLATFORM, method, outcome).inc()

    async def _read_capped(self, resp: httpx.Response, method: str) -> bytes:
        """The body, refused past max_response_bytes without reading further (an endless stream)."""
        declared = resp.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_response_bytes:
            raise BadResponse("RESPONSE_TOO_LARGE", f"Content-Length {declared}", method=method)
        buf = bytearray()
        async for chunk in resp.aiter_bytes():
            buf += chunk
            if len(buf) > self.max_response_bytes:
                raise BadResponse(
                    "RESPONSE_TOO_LARGE", f"more than {self.max_response_bytes} bytes", method=method
                )
        return bytes(buf)

    @staticmethod
    def _decode(resp: httpx.Response, content: bytes, method: str) -> dict[str, Any]:
        try:
            payload = json.loads(content) if content else {}
        except (ValueError, RecursionError):
            payload = None
        if not isinstance(payload, dict):
            if resp.status_code >= 400:
                return {"error": f"HTTP_{resp.status_code}"}
            raise BadResponse("BAD_RESPONSE", f"not a JSON object (HTTP {resp.status_code})", method=method)
        return payload


def result_items(result: Any) -> list[Any]:
    """``DATA.RESULT`` of imconnector.send.messages as a list (PHP may send a numeric-keyed map)."""
    if not isinstance(result, dict):
        return []
    data = result.get("DATA") or result.get("data")
    if not isinstance(data, dict):
        return []
    return as_list(data.get("RESULT") or data.get("result"))


def quiet_http_client_logs() -> None:
    """httpx logs every request at INFO; the external-call metrics and spans already cover them."""
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
