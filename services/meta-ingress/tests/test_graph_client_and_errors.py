"""Graph API error parsing (httpx.MockTransport: the HTTP boundary) and what each error means."""

from __future__ import annotations

import json

import httpx
import pytest
from meta_ingress.graph.client import GraphClient, parse_retry_after
from meta_ingress.graph.errors import Action, GraphApiError, GraphTransportError, classify, notice_for
from meta_ingress.settings import DispatcherSettings


def graph_error(code: int | None, http: int = 400, subcode: int | None = None) -> GraphApiError:
    return GraphApiError(http, code, f"(#{code}) error", subcode=subcode, details="details")


@pytest.mark.parametrize(
    ("code", "http", "action"),
    [
        (130429, 429, Action.THROTTLE),
        (131056, 400, Action.PAIR),
        (131000, 500, Action.RETRY),
        (1, 400, Action.RETRY),
        (2, 503, Action.RETRY),
        (131016, 503, Action.RETRY),
        (131057, 400, Action.RETRY),
        (4, 400, Action.THROTTLE),
        (80007, 400, Action.THROTTLE),
        (190, 401, Action.AUTH),
        (0, 401, Action.AUTH),
        (131047, 400, Action.WINDOW),
        (131026, 400, Action.NOTIFY),
        (131049, 400, Action.NOTIFY),
        (131050, 400, Action.NOTIFY),
        (131053, 400, Action.NOTIFY),
        (131048, 400, Action.NOTIFY),
        (100, 400, Action.FAULT),
        (131008, 400, Action.FAULT),
        (131009, 400, Action.FAULT),
        (10, 403, Action.FAULT),
        (200, 403, Action.FAULT),
        (368, 403, Action.FAULT),
        (131031, 403, Action.FAULT),
        (132000, 400, Action.NOTIFY),  # a template the operator sent: they can fix the values
        (132069, 400, Action.FAULT),
        (999999, 400, Action.FAULT),
        (999999, 502, Action.RETRY),
        (None, 502, Action.RETRY),
        (None, 429, Action.THROTTLE),
        (None, 401, Action.AUTH),
        (None, 404, Action.FAULT),
    ],
)
def test_classification(code: int | None, http: int, action: Action) -> None:
    assert classify(graph_error(code, http)) == action


def test_transport_errors_are_transient() -> None:
    assert classify(GraphTransportError("timeout", maybe_delivered=True)) == Action.RETRY


def test_notices_are_specific() -> None:
    assert "24 hours" in notice_for(graph_error(131047))
    assert "/template NAME" in notice_for(graph_error(131047))  # the 131047 notice offers the templates
    assert "not on WhatsApp" in notice_for(graph_error(131026))
    assert "access token" in notice_for(graph_error(190, 401))
    assert "administrator" in notice_for(graph_error(131031, 403))
    assert "file" in notice_for(graph_error(131053))
    assert "132000" in notice_for(graph_error(132000))


def test_retry_after_parsing() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", now=4.0) == pytest.approx(6.0)


def settings() -> DispatcherSettings:
    return DispatcherSettings(graph_api_base_url="https://graph.test", graph_api_version="v25.0")


async def test_send_parses_the_wamid_and_the_error_envelope() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = json.loads(request.content)
        if body["to"] == "1":
            return httpx.Response(200, json={"messages": [{"id": "wamid.OK", "message_status": "accepted"}]})
        return httpx.Response(
            429,
            headers={"Retry-After": "3"},
            json={
                "error": {
                    "message": "(#130429) Rate limit hit",
                    "type": "OAuthException",
                    "code": 130429,
                    "error_data": {"messaging_product": "whatsapp", "details": "slow down"},
                    "fbtrace_id": "Axyz",
                }
            },
        )

    client = GraphClient(settings(), transport=httpx.MockTransport(handler))
    assert await client.send_message("55", "tok", {"to": "1"}) == "wamid.OK"
    assert str(seen[0].url) == "https://graph.test/v25.0/55/messages"
    assert seen[0].headers["authorization"] == "Bearer tok"
    with pytest.raises(GraphApiError) as err:
        await client.send_message("55", "tok", {"to": "2"})
    assert (err.value.code, err.value.http_status, err.value.retry_after) == (130429, 429, 3.0)
    assert err.value.details == "slow down" and err.value.fbtrace_id == "Axyz"
    assert err.value.title == "Rate limit hit"
    await client.aclose()


async def test_non_json_errors_and_broken_answers() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/messages"):
            return httpx.Response(200, json={"messages": []})
        return httpx.Response(502, text="<html>Bad gateway</html>")

    client = GraphClient(settings(), transport=httpx.MockTransport(handler))
    with pytest.raises(GraphTransportError) as broken:
        await client.send_message("55", "tok", {"to": "1"})
    assert broken.value.maybe_delivered
    with pytest.raises(GraphApiError) as err:
        await client.media_info("123", "tok", "55")
    assert err.value.code is None and err.value.http_status == 502
    assert classify(err.value) == Action.RETRY
    await client.aclose()


async def test_connect_errors_are_known_unsent() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client = GraphClient(settings(), transport=httpx.MockTransport(handler))
    with pytest.raises(GraphTransportError) as err:
        await client.send_message("55", "tok", {"to": "1"})
    assert not err.value.maybe_delivered
    await client.aclose()


async def test_media_download_refuses_plain_http_and_upload_is_multipart() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v25.0/55/media"
        content = request.content
        assert b'name="messaging_product"' in content and b"whatsapp" in content
        assert b'name="file"; filename="a.jpg"' in content
        return httpx.Response(200, json={"id": "4242"})

    client = GraphClient(settings(), transport=httpx.MockTransport(handler))
    assert await client.upload_media("55", "tok", b"\xff\xd8", "image/jpeg", "a.jpg") == "4242"
    with pytest.raises(GraphTransportError):
        async with client.download("http://lookaside.example/x", "tok", 5):
            pass
    await client.aclose()
