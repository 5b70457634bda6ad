"""zaptrix.binding against the Graph API stand-in (a real process) and the kit's mapper and token-keeper:
each check's result, what is stored and what is not, and that no secret shows in a result or a repr."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import grpc
import httpx
import pytest
from zaptrix.binding import (
    ChannelBinder,
    Check,
    InvalidBinding,
    NotThisPortals,
    NumberCredentials,
    Outcome,
)
from zaptrix.settings import ChannelBindingSettings
from zaptrix.v1 import mapper_pb2_grpc, token_keeper_pb2_grpc
from zaptrix_testing.fakes import GrpcFakes, start_fakes
from zaptrix_testing.ports import free_port
from zaptrix_testing.processes import Proc, Spec, console_script, start_processes, stop_all

NUMBER, WABA, TOKEN = "100000000000001", "200000000000001", "sandbox-wa-token"
GOOD = NumberCredentials(NUMBER, WABA, TOKEN, "app-secret-1", "verify-me-1")


@pytest.fixture(scope="module")
def graph_url(tmp_path_factory: pytest.TempPathFactory, processes: None) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    logs: Path = tmp_path_factory.mktemp("graph")
    procs: list[Proc] = start_processes(
        Spec(
            [console_script("sandbox-graph")],
            {"SANDBOX_GRAPH_PORT": str(port), "SANDBOX_GRAPH_WEBHOOK_RETRY_DELAYS_S": "[]"},
            f"{url}/_sandbox/health",
            logs / "graph.log",
        )
    )
    yield url
    stop_all(procs)


@dataclass
class Webhook:
    """Answers Meta's handshake as meta-ingress does: 200 + challenge for a verify token token-keeper
    knows, 403 otherwise (meta_ingress/web/webhooks.py)."""

    url: str
    fakes: GrpcFakes | None = None


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    hook = Webhook("")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            args = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
            known = hook.fakes is not None and any(
                c.verify_token == args.get("hub.verify_token")
                for c in hook.fakes.token_keeper.channels.values()
            )
            body = args.get("hub.challenge", "").encode() if known else b'{"error":"forbidden"}'
            self.send_response(200 if known else 403)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hook.url = f"http://127.0.0.1:{server.server_address[1]}/webhooks/meta"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield hook
    server.shutdown()


@dataclass
class Env:
    binder: ChannelBinder
    fakes: GrpcFakes
    graph: httpx.AsyncClient


@pytest.fixture
async def env(graph_url: str, webhook: Webhook) -> AsyncIterator[Env]:
    fakes = await start_fakes()
    webhook.fakes = fakes
    channel = grpc.aio.insecure_channel(fakes.addr)
    settings = ChannelBindingSettings(
        graph_api_base_url=graph_url, allow_insecure_http=True, meta_webhook_url=webhook.url
    )
    binder = ChannelBinder(
        mapper_pb2_grpc.MapperStub(channel),
        token_keeper_pb2_grpc.TokenKeeperStub(channel),
        settings,
        timeout=5,
    )
    async with httpx.AsyncClient(base_url=graph_url) as graph:
        (await graph.post("/_sandbox/reset")).raise_for_status()
        yield Env(binder, fakes, graph)
    await binder.aclose()
    await channel.close()
    await fakes.server.stop(0)


def outcomes(checks: list) -> dict[str, str]:  # type: ignore[type-arg]
    return {str(c.check): str(c.outcome) for c in checks}


async def test_good_credentials_pass_every_check_and_are_stored(env: Env) -> None:
    result = await env.binder.bind("portal-a", 3, GOOD)
    assert result.ok and result.bound
    assert outcomes(result.checks) == {
        "number_free": "ok",
        "token_reads_number": "ok",
        "app_subscribed": "ok",
        "webhook_verified": "ok",
    }
    assert result.number is not None and result.number.quality_rating == "GREEN"
    assert result.number.messaging_limit == "TIER_2K" and result.number.throughput_level == "STANDARD"
    channel = env.fakes.mapper.channels[NUMBER]
    assert (channel.member_id, channel.line_id, channel.active) == ("portal-a", 3, True)
    assert channel.display_phone_number == "15550000001"
    creds = env.fakes.token_keeper.channels[NUMBER]
    assert (creds.access_token, creds.app_secret, creds.verify_token, creds.waba_id) == (
        TOKEN,
        "app-secret-1",
        "verify-me-1",
        WABA,
    )
    shown = json.dumps(result.as_dict()) + repr(result) + repr(GOOD)
    for secret in (TOKEN, "app-secret-1", "verify-me-1"):
        assert secret not in shown


async def test_a_bad_token_stores_nothing(env: Env) -> None:
    result = await env.binder.bind("portal-a", 3, NumberCredentials(NUMBER, WABA, "not-the-token", "s", "v"))
    assert not result.bound and not result.ok
    token = next(c for c in result.checks if c.check is Check.TOKEN_READS_NUMBER)
    assert (token.outcome, token.reason) == (Outcome.FAILED, "token_invalid")
    assert outcomes(result.checks)["webhook_verified"] == "skipped"
    assert NUMBER not in env.fakes.mapper.channels and NUMBER not in env.fakes.token_keeper.channels


async def test_another_numbers_token_cannot_bind_it(env: Env) -> None:
    other = {"phone_number_id": "100000000000009", "display_phone_number": "1", "access_token": "t9"}
    mine = {"phone_number_id": NUMBER, "display_phone_number": "15550000001", "access_token": TOKEN}
    await env.graph.post("/_sandbox/config", json={"channels": [mine, other]})
    result = await env.binder.bind("portal-a", 3, NumberCredentials(NUMBER, WABA, "t9", "s", "v"))
    token = next(c for c in result.checks if c.check is Check.TOKEN_READS_NUMBER)
    assert (token.outcome, token.reason) == (Outcome.FAILED, "not_readable")
    assert not result.bound


async def test_unsubscribed_app_and_wrong_webhook_are_reported_but_bound(env: Env, webhook: Webhook) -> None:
    channel = {"phone_number_id": NUMBER, "display_phone_number": "15550000001", "access_token": TOKEN}
    await env.graph.post("/_sandbox/config", json={"channels": [{**channel, "app_subscribed": False}]})
    result = await env.binder.bind("portal-a", 3, GOOD)
    assert result.bound and not result.ok
    subscribed = next(c for c in result.checks if c.check is Check.APP_SUBSCRIBED)
    assert (subscribed.outcome, subscribed.reason) == (Outcome.FAILED, "not_subscribed")
    # The webhook URL answers the handshake only for a stored verify token: point the check elsewhere.
    env.binder.settings = env.binder.settings.model_copy(
        update={"meta_webhook_url": f"http://127.0.0.1:{free_port()}/webhooks/meta"}
    )
    again = await env.binder.bind("portal-a", 3, GOOD)
    hook = next(c for c in again.checks if c.check is Check.WEBHOOK_VERIFIED)
    assert (hook.outcome, hook.reason) == (Outcome.FAILED, "webhook_unreachable")


async def test_a_number_of_another_portal_is_neither_bound_nor_touched(env: Env) -> None:
    env.fakes.mapper.bind(NUMBER, "portal-b", 1)
    result = await env.binder.bind("portal-a", 3, GOOD)
    assert not result.bound
    assert (str(result.checks[0].check), result.checks[0].reason) == ("number_free", "bound_elsewhere")
    assert env.fakes.mapper.channels[NUMBER].member_id == "portal-b"
    assert NUMBER not in env.fakes.token_keeper.channels  # its credentials were not overwritten
    with pytest.raises(NotThisPortals):
        await env.binder.set_active("portal-a", NUMBER, False)
    with pytest.raises(NotThisPortals):
        await env.binder.health("portal-a", NUMBER)
    assert env.fakes.mapper.channels[NUMBER].active


async def test_pause_resume_and_health(env: Env) -> None:
    await env.binder.bind("portal-a", 3, GOOD)
    paused = await env.binder.set_active("portal-a", NUMBER, False)
    assert not paused.active and not env.fakes.mapper.channels[NUMBER].active
    assert paused.line_id == 3 and paused.member_id == "portal-a"
    assert (await env.binder.set_active("portal-a", NUMBER, True)).active
    health = await env.binder.health("portal-a", NUMBER)
    assert health.ok and health.number is not None and health.number.quality_rating == "GREEN"
    await env.graph.post("/_sandbox/config", json={"expire_tokens": [TOKEN]})
    expired = await env.binder.health("portal-a", NUMBER)
    token = next(c for c in expired.checks if c.check is Check.TOKEN_READS_NUMBER)
    assert (token.outcome, token.reason) == (Outcome.FAILED, "token_invalid")


@pytest.mark.parametrize(
    ("creds", "field"),
    [
        (NumberCredentials("12ab", WABA, TOKEN), "phone_number_id"),
        (NumberCredentials(NUMBER, "", TOKEN), "waba_id"),
        (NumberCredentials(NUMBER, WABA, " "), "access_token"),
        (NumberCredentials(NUMBER, WABA, TOKEN, "x" * 300), "app_secret"),
        (NumberCredentials(NUMBER, WABA, TOKEN, "", "with space"), "verify_token"),
    ],
)
async def test_malformed_input_is_refused_before_anything_is_asked(
    env: Env, creds: NumberCredentials, field: str
) -> None:
    with pytest.raises(InvalidBinding) as refused:
        await env.binder.bind("portal-a", 3, creds)
    assert refused.value.field_name == field
    assert not env.fakes.mapper.calls and not env.fakes.token_keeper.calls


async def test_without_a_webhook_url_the_handshake_is_not_checked_and_says_so(env: Env) -> None:
    env.binder.settings = env.binder.settings.model_copy(update={"meta_webhook_url": ""})
    result = await env.binder.bind("portal-a", 3, GOOD)
    hook = next(c for c in result.checks if c.check is Check.WEBHOOK_VERIFIED)
    assert hook.outcome is Outcome.SKIPPED and "ZAPTRIX_META_WEBHOOK_URL" in hook.detail
    assert result.bound and not result.ok  # bound, but not known to work


async def test_unbind_only_the_portals_own_number_without_conversations(env: Env) -> None:
    from zaptrix.binding import NumberInUse

    await env.binder.bind("portal-a", 3, GOOD)
    env.fakes.mapper.bind("100000000000009", "portal-b", 1)
    with pytest.raises(NotThisPortals):
        await env.binder.unbind("portal-a", "100000000000009")
    env.fakes.mapper.add_conversation(NUMBER, "4915100000001")
    with pytest.raises(NumberInUse):
        await env.binder.unbind("portal-a", NUMBER)
    env.fakes.mapper.conversations.clear()
    removed = await env.binder.unbind("portal-a", NUMBER)
    assert removed.phone_number_id == NUMBER and NUMBER not in env.fakes.mapper.channels
    assert "100000000000009" in env.fakes.mapper.channels
