"""The REST client: documented error codes become typed errors; batch results are split per command."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from bitrix_ingress.bitrix_rest import client as rest
from bitrix_ingress.formparse import parse_form

ENDPOINT = "https://p.bitrix24.com/rest/"


def client(handler: Any, body: str = "json") -> rest.BitrixRest:
    return rest.BitrixRest(transport=httpx.MockTransport(handler), body=body)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "payload", "headers", "cls", "permanent", "retry_after"),
    [
        (
            401,
            {"error": "expired_token", "error_description": "The access token provided has expired."},
            {},
            rest.ExpiredToken,
            False,
            None,
        ),
        (401, {"error": "invalid_token"}, {}, rest.InvalidToken, False, None),
        (401, {"error": "NO_AUTH_FOUND"}, {}, rest.InvalidToken, False, None),
        (
            503,
            {"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"},
            {"Retry-After": "2"},
            rest.QueryLimitExceeded,
            False,
            2.0,
        ),
        (
            503,
            {"error": "QUERY_LIMIT_EXCEEDED", "time": {"operating_reset_at": 9999999999}},
            {},
            rest.QueryLimitExceeded,
            False,
            None,
        ),
        (503, {"error": "OVERLOAD_LIMIT"}, {}, rest.Overloaded, False, None),
        (400, {"error": "ERROR_ARGUMENT", "error_description": "bad"}, {}, rest.ArgumentError, True, None),
        (400, {"error": "NOT_ACTIVE_LINE"}, {}, rest.NotActiveLine, True, None),
        (403, {"error": "WRONG_AUTH_TYPE"}, {}, rest.WrongAuthType, True, None),
        (403, {"error": "insufficient_scope"}, {}, rest.AccessDenied, True, None),
        (404, {"error": "ERROR_METHOD_NOT_FOUND"}, {}, rest.MethodNotFound, True, None),
        (400, {"error": "ERROR_IMCONNECTOR_NOT_ALL_THE_REQUIRED_DATA"}, {}, rest.ArgumentError, True, None),
        (500, {"error": "INTERNAL_SERVER_ERROR"}, {}, rest.ServerError, False, None),
        (502, None, {}, rest.ServerError, False, None),
        (418, {"error": "SOMETHING_NEW"}, {}, rest.ArgumentError, True, None),
    ],
)
async def test_error_classification(
    status: int,
    payload: Any,
    headers: dict[str, str],
    cls: type[rest.BitrixError],
    permanent: bool,
    retry_after: float | None,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if payload is None:
            return httpx.Response(status, content=b"<html>Bad Gateway</html>", headers=headers)
        return httpx.Response(status, json=payload, headers=headers)

    c = client(handler)
    with pytest.raises(cls) as info:
        await c.call(ENDPOINT, "SECRET-TOKEN-123", "imconnector.send.messages", {"LINE": 1})
    assert info.value.permanent is permanent
    assert info.value.retry_after == retry_after
    assert info.value.method == "imconnector.send.messages" and "SECRET-TOKEN-123" not in str(info.value)
    await c.aclose()


async def test_operation_time_limit_waits_until_reset() -> None:
    import time

    reset = time.time() + 120
    c = client(
        lambda r: httpx.Response(
            429, json={"error": "OPERATION_TIME_LIMIT", "time": {"operating_reset_at": reset}}
        )
    )
    with pytest.raises(rest.MethodBlocked) as info:
        await c.call(ENDPOINT, "tok", "crm.contact.add", {})
    assert info.value.retry_after is not None and 110 < info.value.retry_after <= 120
    await c.aclose()


async def test_a_blocked_nested_call_waits_until_its_reset(sandbox: str) -> None:
    """Against the stand-in: a batch's nested call over its method's operating time is MethodBlocked with the
    wait until operating_reset_at (from result_time), like a blocked single call; the others answer."""
    async with httpx.AsyncClient() as http:
        await http.post(
            f"{sandbox}/_sandbox/config", json={"operating_limit_s": 1, "operating_cost_s": {"profile": 2}}
        )
        portal = (await http.get(f"{sandbox}/_sandbox/portals/sandbox-member-1")).json()
    c = rest.BitrixRest()
    out = await c.batch(
        portal["client_endpoint"],
        portal["access_token"],
        {"a": ("profile", {}), "b": ("profile", {}), "s": ("scope", {})},
    )
    blocked = out.errors["b"]
    assert isinstance(blocked, rest.MethodBlocked) and set(out.results) == {"a", "s"}
    assert blocked.retry_after is not None and 0 < blocked.retry_after <= 600
    await c.aclose()


async def test_transport_errors_and_garbage_are_transient() -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    for handler, cls in (
        (timeout, rest.TransportError),
        (refused, rest.TransportError),
        (lambda r: httpx.Response(200, content=b"<html>maintenance</html>"), rest.BadResponse),
    ):
        c = client(handler)
        with pytest.raises(cls) as info:
            await c.call(ENDPOINT, "tok", "batch", {})
        assert not info.value.permanent
        await c.aclose()


@pytest.mark.parametrize("body", ["json", "form"])
async def test_token_travels_in_the_body_not_the_url(body: str) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"result": {"ok": True}, "time": {}})

    c = client(handler, body)
    result = await c.call(
        ENDPOINT,
        "secret-token",
        "imconnector.send.messages",
        {"LINE": 3, "MESSAGES": [{"user": {"id": "1"}}]},
    )
    assert result == {"ok": True}
    (req,) = seen
    assert str(req.url) == "https://p.bitrix24.com/rest/imconnector.send.messages"
    params = json.loads(req.content) if body == "json" else parse_form(req.content)
    assert params["auth"] == "secret-token"
    assert "secret-token" not in str(req.url)
    await c.aclose()


async def test_batch_splits_results_and_errors() -> None:
    captured: dict[str, Any] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        captured.update(json.loads(request.content))
        return httpx.Response(
            200,
            json={
                "result": {
                    "result": {"a": {"SUCCESS": True}},
                    "result_error": {"b": {"error": "NOT_ACTIVE_LINE", "error_description": "inactive"}},
                    "result_total": [],
                    "result_next": [],
                    "result_time": {},
                }
            },
        )

    c = client(handler)
    out = await c.batch(
        ENDPOINT,
        "tok",
        {
            "a": ("imconnector.send.messages", {"LINE": 1, "MESSAGES": [{"message": {"id": "w&1"}}]}),
            "b": ("imconnector.send.messages", {"LINE": 2}),
            "c": ("crm.contact.add", {}),
        },
    )
    assert captured["cmd"]["a"].startswith("imconnector.send.messages?")
    assert parse_form(captured["cmd"]["a"].split("?", 1)[1])["MESSAGES"]["0"]["message"]["id"] == "w&1"
    assert out.results == {"a": {"SUCCESS": True}}
    assert (
        isinstance(out.errors["b"], rest.NotActiveLine)
        and out.errors["b"].method == "imconnector.send.messages"
    )
    assert isinstance(out.errors["c"], rest.ServerError)  # not executed: retry it
    await c.aclose()


async def test_batch_with_php_empty_arrays() -> None:
    c = client(lambda r: httpx.Response(200, json={"result": {"result": [], "result_error": []}}))
    out = await c.batch(ENDPOINT, "tok", {"0": ("crm.duplicate.findbycomm", {})})
    assert out.results == {} and isinstance(out.errors["0"], rest.ServerError)
    await c.aclose()


def test_result_items() -> None:
    assert rest.result_items({"SUCCESS": True, "DATA": {"RESULT": {"1": "b", "0": "a"}}}) == ["a", "b"]
    assert rest.result_items({"SUCCESS": True, "DATA": []}) == []
    assert rest.result_items(None) == []
