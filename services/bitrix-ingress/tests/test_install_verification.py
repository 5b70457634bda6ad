"""The OAuth-server check of installs (oauth_check.py): both possible app.info layouts, the refresh-exchange
fallback, and every refusal reason."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from bitrix_ingress.settings import WebSettings
from bitrix_ingress.web.install_guard import SourceLimiter
from bitrix_ingress.web.oauth_check import (
    BAD_OAUTH,
    ENDPOINT_NOT_ALLOWED,
    MEMBER_MISMATCH,
    NOT_CONFIGURED,
    OAUTH_UNAVAILABLE,
    OTHER_APP,
    OAuthServer,
    Refused,
    parse_claims,
)
from pydantic import SecretStr

OURS = "app.ours.123"
MEMBER = "m-1"


def settings(**kw: Any) -> WebSettings:
    base: dict[str, Any] = {
        "bitrix_client_id": OURS,
        "bitrix_client_secret": SecretStr("s3cret"),
        "bitrix_portal_host_suffixes": ["bitrix24.com"],
    }
    return WebSettings(**(base | kw))


def server(handler: Callable[[httpx.Request], httpx.Response], **kw: Any) -> OAuthServer:
    return OAuthServer(settings(**kw), httpx.AsyncClient(transport=httpx.MockTransport(handler)))


def app_info(result: dict[str, Any], status: int = 200) -> Callable[[httpx.Request], httpx.Response]:
    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.host == "oauth.bitrix.info"
        if request.url.path == "/rest/app.info":
            return httpx.Response(status, json=result)
        raise AssertionError(f"unexpected {request.url}")

    return handle


FULL = {
    "result": {
        "client_id": OURS,
        "scope": "imconnector",
        "expires": int(time.time()) + 3000,
        "install": {
            "installed": True,
            "member_id": MEMBER,
            "domain": "acme.bitrix24.com",
            "client_endpoint": "https://acme.bitrix24.com/rest/",
        },
    }
}


async def verify(srv: OAuthServer, **kw: Any) -> Any:
    args = {"member_id": MEMBER, "access_token": "a", "refresh_token": "r", "claimed_expires_at": 1e11}
    return await srv.verify(**(args | kw))


async def test_nested_layout_names_our_app_and_the_portal() -> None:
    auth = await verify(server(app_info(FULL)))
    assert (auth.client_endpoint, auth.domain, auth.exchanged) == (
        "https://acme.bitrix24.com/rest/",
        "acme.bitrix24.com",
        False,
    )
    assert auth.expires_at <= time.time() + 3600  # the claimed year-5138 expiry is capped


async def test_flat_layout_with_code_and_domain_only() -> None:
    flat = {"result": {"CODE": OURS, "member_id": MEMBER, "domain": "acme.bitrix24.com"}}
    auth = await verify(server(app_info(flat)))
    assert auth.client_endpoint == "https://acme.bitrix24.com/rest/"


def test_the_auth_servers_own_domain_is_not_the_portal() -> None:
    claims = parse_claims({"domain": "oauth.bitrix.info", "member_id": MEMBER}, "oauth.bitrix.info")
    assert claims.domain == "" and claims.client_endpoint == ""


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        ({"result": {**FULL["result"], "client_id": "app.other.1"}}, OTHER_APP),
        (
            {"result": {**FULL["result"], "install": {**FULL["result"]["install"], "member_id": "m-2"}}},  # type: ignore[dict-item]
            MEMBER_MISMATCH,
        ),
        (
            {
                "result": {
                    **FULL["result"],
                    "install": {**FULL["result"]["install"], "client_endpoint": "https://evil.example/rest/"},  # type: ignore[dict-item]
                }
            },
            ENDPOINT_NOT_ALLOWED,
        ),
    ],
)
async def test_refusals(result: dict[str, Any], reason: str) -> None:
    with pytest.raises(Refused) as caught:
        await verify(server(app_info(result)))
    assert caught.value.reason == reason and caught.value.status == 403


async def test_an_unknown_token_is_bad_oauth() -> None:
    with pytest.raises(Refused) as caught:
        await verify(server(app_info({"error": "invalid_token"}, 401)))
    assert (caught.value.reason, caught.value.status) == (BAD_OAUTH, 401)


async def test_an_oauth_outage_is_503_and_not_the_callers_fault() -> None:
    with pytest.raises(Refused) as caught:
        await verify(server(app_info({}, 502)))
    assert (caught.value.reason, caught.value.status) == (OAUTH_UNAVAILABLE, 503)


async def test_without_a_client_id_nothing_can_be_verified() -> None:
    with pytest.raises(Refused) as caught:
        await verify(server(app_info(FULL), bitrix_client_id=""))
    assert (caught.value.reason, caught.value.status) == (NOT_CONFIGURED, 503)


def minimal_then_token(token_answer: dict[str, Any], status: int = 200) -> Callable[..., httpx.Response]:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/rest/app.info":
            return httpx.Response(200, json={"result": {"scope": "imconnector", "expires": 1}})
        assert request.url.path == "/oauth/token/"
        assert request.url.params["client_id"] == OURS and request.url.params["client_secret"] == "s3cret"
        return httpx.Response(status, json=token_answer)

    handle.seen = seen  # type: ignore[attr-defined]
    return handle


async def test_minimal_app_info_falls_back_to_a_refresh_exchange() -> None:
    answer = {
        "access_token": "a2",
        "refresh_token": "r2",
        "expires_in": 3600,
        "domain": "oauth.example",  # the auth server's domain, whatever its host name
        "member_id": MEMBER,
        "client_endpoint": "https://acme.bitrix24.com/rest/",
    }
    auth = await verify(server(minimal_then_token(answer)))
    assert (auth.access_token, auth.refresh_token, auth.exchanged) == ("a2", "r2", True)
    assert auth.domain == "acme.bitrix24.com"


async def test_a_refresh_token_of_another_app_or_portal_is_refused() -> None:
    with pytest.raises(Refused) as caught:
        await verify(server(minimal_then_token({"error": "invalid_grant"}, 400)))
    assert caught.value.reason == BAD_OAUTH
    other_portal = {"access_token": "a", "refresh_token": "r", "member_id": "m-9", "client_endpoint": "x"}
    with pytest.raises(Refused) as caught:
        await verify(server(minimal_then_token(other_portal)))
    assert caught.value.reason == MEMBER_MISMATCH


async def test_an_oversized_answer_is_refused() -> None:
    big = {"result": {"pad": "x" * 100_000}}
    with pytest.raises(Refused) as caught:
        await verify(server(app_info(big)))
    assert caught.value.reason == BAD_OAUTH
    assert "oauth app.info" in caught.value.detail and json.dumps(big)[:50] not in str(caught.value)


async def test_the_source_limiter_counts_only_what_it_is_charged() -> None:
    limiter = SourceLimiter(per_minute=3)
    assert not limiter.blocked("1.2.3.4")
    for _ in range(3):
        await limiter.charge("1.2.3.4")
    assert limiter.blocked("1.2.3.4")
    assert not limiter.blocked("5.6.7.8")
