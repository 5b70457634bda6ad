"""Bitrix24 REST front door: parameter parsing, auth, leaky bucket, `time` block, method dispatch, batch."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
from sanic import Request
from sanic.response import HTTPResponse
from sanic.response import json as json_response

from . import formdata
from .bitrix_settings import BitrixOptions
from .bitrix_state import AccessToken, PortalState
from .tasks import Background


class RestError(Exception):
    def __init__(self, code: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.status = status

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "error_description": self.description}


@dataclass
class Ctx:
    portal: PortalState
    options: BitrixOptions
    user_id: int
    base_url: str
    background: Background
    client: httpx.AsyncClient
    client_id: str = ""  # the app the access token was issued to

    def rest_endpoint(self) -> str:
        return f"{self.base_url}/rest/"


Method = Callable[[Ctx, dict[str, Any]], dict[str, Any]]
METHODS: dict[str, tuple[str | None, Method]] = {}  # name -> (required scope, handler)


def method(name: str, scope: str | None = None) -> Callable[[Method], Method]:
    def register(fn: Method) -> Method:
        METHODS[name] = (scope, fn)
        return fn

    return register


def ok(result: Any, **extra: Any) -> dict[str, Any]:
    return {"result": result, **extra}


def php_empty(value: dict[str, Any]) -> dict[str, Any] | list[Any]:
    """PHP encodes an empty array as [] even where a filled one is an object."""
    return value if value else []


def upper_keys(params: dict[str, Any]) -> dict[str, Any]:
    # Bitrix24 REST methods read top-level parameters case-insensitively.
    return {k.upper(): v for k, v in params.items()}


def request_params(request: Request) -> dict[str, Any]:
    params = formdata.parse_query(request.query_string or "")
    ctype = (request.headers.get("content-type") or "").lower()
    body = request.body or b""
    if body:
        if "json" in ctype:
            try:
                data = json.loads(body)
            except ValueError:
                raise RestError("INVALID_REQUEST", "Invalid JSON body") from None
            if isinstance(data, dict):
                params.update(data)
        else:  # form-encoded (also the default when curl/PHP send no type)
            params.update(formdata.parse_query(body.decode("utf-8", "replace")))
    return params


def time_block(start: float, ctx: Ctx, name: str) -> dict[str, Any]:
    """Bitrix24's `time` member; `operating` and `operating_reset_at` are those of `name` for ctx's app."""
    finish = time.time()
    fmt = "%Y-%m-%dT%H:%M:%S+00:00"
    used = ctx.portal.operating
    return {
        "start": start,
        "finish": finish,
        "duration": finish - start,
        "processing": finish - start,
        "date_start": datetime.fromtimestamp(start, UTC).strftime(fmt),
        "date_finish": datetime.fromtimestamp(finish, UTC).strftime(fmt),
        "operating_reset_at": used.reset_at(ctx.client_id, name),
        "operating": used.operating(ctx.client_id, name),
    }


def call(ctx: Ctx, name: str, params: dict[str, Any]) -> dict[str, Any]:
    name = name.lower()
    entry = METHODS.get(name)
    if entry is None:
        raise RestError("ERROR_METHOD_NOT_FOUND", "Method not found!", 404)
    scope, fn = entry
    if scope is not None and scope not in ctx.portal.spec.scope.split(","):
        raise RestError(
            "insufficient_scope",
            "The request requires higher privileges than provided by the access token",
            403,
        )
    if name == "batch":  # not counted itself: each nested call counts toward its own method
        return fn(ctx, upper_keys(params))
    used = ctx.portal.operating
    if used.operating(ctx.client_id, name) > ctx.options.operating_limit_s:
        raise RestError("OPERATION_TIME_LIMIT", f"Method is blocked due to operation time limit: {name}", 429)
    started = time.perf_counter()
    try:
        return fn(ctx, upper_keys(params))
    finally:
        cost = ctx.options.operating_cost_s.get(name, 0.0)
        used.charge(ctx.client_id, name, time.perf_counter() - started + cost)


_RESULT_REF = re.compile(r"\$result\[([^\]]+)\]((?:\[[^\]]+\])*)")


@method("batch")
def batch(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    """bitrix24.md §6: up to 50 commands, one HTTP hit for the leaky bucket, `$result[key][field]` chaining."""
    cmd = p.get("CMD")
    commands = formdata.as_list(cmd)
    if isinstance(cmd, dict) and commands is None:
        items = list(cmd.items())
    elif commands is not None:
        items = [(str(i), c) for i, c in enumerate(commands)]
    else:
        raise RestError("ERROR_ARGUMENT", "Parameter cmd is required and must be an array")
    if len(items) > 50:
        raise RestError("ERROR_BATCH_LENGTH_EXCEEDED", "Max batch length exceeded")
    halt = str(p.get("HALT", "0")).lower() in ("1", "true", "y")
    results: dict[str, Any] = {}
    errors: dict[str, Any] = {}
    totals: dict[str, Any] = {}
    nexts: dict[str, Any] = {}
    times: dict[str, Any] = {}

    def resolve(match: re.Match[str]) -> str:
        value: Any = results.get(match.group(1))
        for field in re.findall(r"\[([^\]]+)\]", match.group(2)):
            value = value.get(field) if isinstance(value, dict) else None
        return quote(str(value if value is not None else ""))

    for key, command in items:
        name, _, query = str(command).partition("?")
        started = time.time()
        try:
            if name.lower() == "batch":
                raise RestError("ERROR_BATCH_METHOD_NOT_ALLOWED", "Method is not allowed for batch usage")
            reply = call(ctx, name, formdata.parse_query(_RESULT_REF.sub(resolve, query)))
            results[key] = reply["result"]
            if "total" in reply:
                totals[key] = reply["total"]
            if "next" in reply:
                nexts[key] = reply["next"]
            outcome: dict[str, Any] = {"status": 200}
        except RestError as err:
            errors[key] = err.body()
            outcome = {"status": err.status, "error": err.code}
        times[key] = time_block(started, ctx, name.lower())
        ctx.portal.log_request(
            {"method": name.lower(), "via": "batch", "params": query, "at": started, **outcome}
        )
        if halt and key in errors:
            break
    return ok(
        {
            "result": php_empty(results),
            "result_error": php_empty(errors),
            "result_total": php_empty(totals),
            "result_next": php_empty(nexts),
            "result_time": php_empty(times),
        }
    )


def authenticate(
    portals: dict[str, PortalState], options: BitrixOptions, token: Any
) -> tuple[PortalState, int]:
    portal, access = find_token(portals, options, token)
    return portal, access.user_id


def find_token(
    portals: dict[str, PortalState], options: BitrixOptions, token: Any
) -> tuple[PortalState, AccessToken]:
    """The portal and the live access token `token` names; RestError (401) otherwise."""
    if not token:
        raise RestError("NO_AUTH_FOUND", "Wrong authorization data", 401)
    for portal in portals.values():
        access = portal.access.get(str(token))
        if access is None:
            continue
        if access.revoked:
            break
        if time.time() >= access.expires_at:
            portal.expired_token_hits += 1
            raise RestError("expired_token", "The access token provided has expired.", 401)
        return portal, access
    if options.unknown_token_error == "NO_AUTH_FOUND":
        raise RestError("NO_AUTH_FOUND", "Wrong authorization data", 401)
    raise RestError("invalid_token", "The access token provided is invalid.", 401)


_OVERLOADED = (
    "REST API is blocked due to overload. This is a manual individual block, to remove it you need to contact "
    "Bitrix24 technical support."
)


def handle(
    request: Request,
    name: str,
    portals: dict[str, PortalState],
    options: BitrixOptions,
    base_url: str,
    background: Background,
    client: httpx.AsyncClient,
) -> HTTPResponse:
    start = time.time()
    name = name.removesuffix(".json").lower()
    try:
        params = request_params(request)
        token = params.pop("auth", None)
        portal, access = find_token(portals, options, token)
    except RestError as err:
        return json_response(err.body(), status=err.status)
    user_id = access.user_id
    portal.peak.hit()
    record: dict[str, Any] = {
        "method": name,
        "http_method": request.method,
        "params": params,
        "at": start,
        "user_id": user_id,
    }
    if portal.spec.member_id in options.overloaded_portals:  # answered before the leaky bucket (UNCONFIRMED)
        portal.log_request({**record, "status": 503, "error": "OVERLOAD_LIMIT"})
        return json_response({"error": "OVERLOAD_LIMIT", "error_description": _OVERLOADED}, status=503)
    if not portal.bucket.try_add():
        portal.rate_limited += 1
        portal.log_request({**record, "status": 503, "error": "QUERY_LIMIT_EXCEEDED"})
        return json_response(
            {"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"}, status=503
        )
    ctx = Ctx(portal, options, user_id, base_url, background, client, access.client_id)
    try:
        payload = call(ctx, name, params)
    except RestError as err:
        portal.log_request(
            {**record, "status": err.status, "error": err.code, "error_description": err.description}
        )
        return json_response({**err.body(), "time": time_block(start, ctx, name)}, status=err.status)
    portal.log_request({**record, "status": 200, "result": payload.get("result")})
    return json_response({**payload, "time": time_block(start, ctx, name)})
