"""The settings page's handlers in-process (fast lane): the real Sanic app on the kit's mapper and
token-keeper, nothing else reachable. Sessions: forged, tampered, expired and other portals' get nothing;
placement requests are parsed strictly; every answer is a page, never a 500."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from bitrix_ingress.settings import WebSettings
from bitrix_ingress.web.app import create_app
from bitrix_ingress.web.settings_page.session import SessionSigner
from sanic import Sanic
from zaptrix.settings import GrpcClientSettings, KafkaSettings
from zaptrix.v1 import mapper_pb2
from zaptrix_testing.fakes import FakeTokenKeeper, GrpcFakes, Portal, start_fakes
from zaptrix_testing.ports import free_port

SECRET = "handler-test-session-secret-0123456789"
ACTION = "/webhooks/bitrix24/settings/action"
OPEN = "/webhooks/bitrix24/settings"


@dataclass
class Page:
    url: str
    fakes: GrpcFakes
    signer: SessionSigner
    http: httpx.AsyncClient

    def session(self, member_id: str = "portal-a", **kw: object) -> str:
        return self.signer.issue(member_id, 3, "en", "1", **kw)  # type: ignore[arg-type]

    async def act(self, **form: str) -> httpx.Response:
        return await self.http.post(self.url + ACTION, data=form)


def portals(tk: FakeTokenKeeper) -> None:
    tk.add(Portal("portal-a", "app-token-a"))
    tk.add(Portal("portal-b", "app-token-b"))


@pytest.fixture(scope="module")
async def served() -> AsyncIterator[Page]:
    """One app for the module (a second's start-up each would weigh on the fast lane)."""
    tk = FakeTokenKeeper()
    fakes = await start_fakes(tk=tk)
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens: Graph, webhook, OAuth are unreachable
    settings = WebSettings(
        environment="test",
        allow_insecure_http=True,
        graph_api_base_url=nowhere,
        meta_webhook_url=f"{nowhere}/webhooks/meta",
        bitrix_oauth_server_endpoint=f"{nowhere}/oauth/rest/",
        bitrix_client_id="local.app",
        settings_session_secret=SECRET,
        install_refusals_per_minute=1000,
    )
    Sanic.test_mode = True  # one app per test under the same name
    kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", request_timeout_ms=1000)
    app = create_app(
        settings, kafka, GrpcClientSettings(mapper_addr=fakes.addr, token_keeper_addr=fakes.addr)
    )
    port = free_port()
    server = await app.create_server(host="127.0.0.1", port=port, return_asyncio_server=True)
    assert server is not None
    await server.startup()
    await server.before_start()
    await server.after_start()
    async with httpx.AsyncClient(timeout=30) as http:
        yield Page(f"http://127.0.0.1:{port}", fakes, SessionSigner(SECRET, 600), http)
    await server.before_stop()
    server.close()
    await server.wait_closed()
    await server.after_stop()
    await fakes.server.stop(0)


@pytest.fixture
def page(served: Page) -> Page:
    served.fakes.mapper.clear()
    served.fakes.token_keeper.clear()
    portals(served.fakes.token_keeper)
    return served


def grpc_calls(page: Page) -> list[str]:
    return page.fakes.mapper.calls + page.fakes.token_keeper.calls


async def test_forged_tampered_and_foreign_key_sessions_get_401_and_touch_nothing(page: Page) -> None:
    genuine = page.session()
    body, mac = genuine.split(".")
    other_key = SessionSigner("another-deployments-secret-0123456789", 600).issue("portal-a", 3, "en", "1")
    forged_claims = page.session("portal-b").split(".")[0] + "." + mac  # portal-b's claims, portal-a's MAC
    for session in ("", "nonsense", f"{body}.{mac[:-2]}xx", other_key, forged_claims, "a" * 5000):
        r = await page.act(session=session, action="pause", phone_number_id="100")
        assert r.status_code == 401, session
        assert "text/html" in r.headers["content-type"] and 'id="refusal"' in r.text
    assert grpc_calls(page) == []


async def test_an_expired_session_is_refused(page: Page) -> None:
    old = page.signer.issue("portal-a", 3, "en", "1", now=time.time() - 3600)
    assert (await page.act(session=old, action="show")).status_code == 401


async def test_a_session_of_an_unknown_or_uninstalled_portal_gets_nothing(page: Page) -> None:
    r = await page.act(session=page.session("portal-z"), action="show")
    assert r.status_code == 401 and "refusal" in r.text


async def test_another_portals_number_cannot_be_paused(page: Page) -> None:
    page.fakes.mapper.bind("200", "portal-b", 3)
    r = await page.act(session=page.session("portal-a"), action="pause", phone_number_id="200")
    assert r.status_code == 404 and 'id="notice"' in r.text
    assert page.fakes.mapper.channels["200"].active
    assert "BindChannel:200" not in page.fakes.mapper.calls


async def test_pausing_and_resuming_the_portals_own_number(page: Page) -> None:
    page.fakes.mapper.bind("100", "portal-a", 3)
    r = await page.act(session=page.session(), action="pause", phone_number_id="100")
    assert r.status_code == 200 and not page.fakes.mapper.channels["100"].active
    assert 'data-number="100"' in r.text
    r = await page.act(session=page.session(), action="resume", phone_number_id="100")
    assert r.status_code == 200 and page.fakes.mapper.channels["100"].active


async def test_unbinding_a_number_only_when_it_is_the_portals_and_unused(page: Page) -> None:
    page.fakes.mapper.bind("100", "portal-a", 3)
    page.fakes.mapper.bind("101", "portal-a", 3)
    page.fakes.mapper.bind("200", "portal-b", 3)
    page.fakes.mapper.add_conversation("101", "4915100000001")
    r = await page.act(session=page.session(), action="unbind", phone_number_id="200")
    assert r.status_code == 404 and "200" in page.fakes.mapper.channels
    r = await page.act(session=page.session(), action="unbind", phone_number_id="101")
    assert r.status_code == 409 and "101" in page.fakes.mapper.channels
    r = await page.act(session=page.session(), action="unbind", phone_number_id="100")
    assert r.status_code == 200 and "100" not in page.fakes.mapper.channels
    assert 'data-number="100"' not in r.text and 'data-number="101"' in r.text


async def test_the_page_shows_only_this_lines_numbers_and_says_what_failed(page: Page) -> None:
    page.fakes.mapper.bind("100", "portal-a", 3)
    page.fakes.mapper.bind("101", "portal-a", 4)  # another line of the same portal
    page.fakes.mapper.bind("200", "portal-b", 3)
    r = await page.act(session=page.session(), action="show")
    assert r.status_code == 200
    assert 'data-number="100"' in r.text and 'data-number="101"' not in r.text
    assert 'data-number="200"' not in r.text
    assert 'data-check="token_reads_number" data-outcome="failed"' in r.text  # no credentials stored
    csp = r.headers["content-security-policy"]
    assert "frame-ancestors" in csp and "form-action 'self'" in csp and "'unsafe-eval'" not in csp
    assert r.headers["cache-control"] == "no-store"


async def test_each_number_shows_its_approved_template_count(page: Page) -> None:
    page.fakes.mapper.bind("100", "portal-a", 3)
    page.fakes.mapper.bind("101", "portal-a", 3)
    for pnid, statuses in (("100", ["APPROVED", "APPROVED", "PAUSED"]), ("101", ["REJECTED"])):
        templates = [
            mapper_pb2.MessageTemplate(template_id=f"{pnid}-{i}", name=f"t{i}", language="en", status=status)
            for i, status in enumerate(statuses)
        ]
        await page.fakes.mapper.ReplaceTemplates(
            mapper_pb2.ReplaceTemplatesRequest(phone_number_id=pnid, waba_id="w", templates=templates), None
        )
    r = await page.act(session=page.session(), action="show")
    assert r.status_code == 200
    counts = re.findall(r'data-hook="templates">approved: (\d+) ', r.text)
    assert counts == ["2", "0"], counts  # PAUSED and REJECTED are not offered


async def test_a_malformed_bind_is_pointed_at_its_field_and_stores_nothing(page: Page) -> None:
    r = await page.act(
        session=page.session(),
        action="bind",
        phone_number_id="<script>alert(1)</script>",
        waba_id="200000000000001",
        access_token="secret-token-xyz",
    )
    assert r.status_code == 400
    assert 'id="phone_number_id"' in r.text and 'aria-invalid="true"' in r.text
    assert "<script>alert(1)</script>" not in r.text and "secret-token-xyz" not in r.text
    assert not page.fakes.mapper.channels and not page.fakes.token_keeper.channels


async def test_a_bind_whose_token_cannot_be_checked_stores_nothing(page: Page) -> None:
    r = await page.act(
        session=page.session(),
        action="bind",
        phone_number_id="100000000000001",
        waba_id="200000000000001",
        access_token="tok",
        app_secret="sec",
        verify_token="ver",
    )
    assert r.status_code == 400
    assert 'data-check="token_reads_number" data-outcome="failed"' in r.text  # Graph unreachable
    assert not page.fakes.mapper.channels and not page.fakes.token_keeper.channels


async def test_unknown_actions_and_garbage_dead_letter_ids(page: Page) -> None:
    assert (await page.act(session=page.session(), action="drop_tables")).status_code == 400
    r = await page.act(session=page.session(), action="replay", dead_letter="../../etc/passwd")
    assert r.status_code == 404 and 'id="notice"' in r.text


async def test_a_line_switch_needs_a_token_the_oauth_server_confirms(page: Page) -> None:
    assert (await page.act(session=page.session(), action="line_off")).status_code == 401
    r = await page.act(session=page.session(), action="line_off", auth="forged")
    assert r.status_code == 503  # the OAuth server cannot be asked: not the caller's fault, nothing done


@pytest.mark.parametrize(
    ("form", "status"),
    [
        ({}, 401),
        ({"member_id": "portal-a", "AUTH_ID": "x"}, 400),  # no PLACEMENT_OPTIONS.LINE
        ({"member_id": "portal-a", "AUTH_ID": "x", "PLACEMENT_OPTIONS": "{not json"}, 400),
        (
            {
                "member_id": "portal-a",
                "AUTH_ID": "x",
                "PLACEMENT_OPTIONS": '{"CONNECTOR":"telegrambot","LINE":1}',
            },
            400,
        ),
        ({"member_id": "portal-a", "AUTH_ID": "x", "PLACEMENT": "CRM_LEAD_DETAIL_TAB"}, 400),
        ({"PLACEMENT_OPTIONS": '{"LINE":1}'}, 401),  # no auth at all
    ],
)
async def test_placement_requests_are_parsed_strictly(page: Page, form: dict[str, str], status: int) -> None:
    if status == 401 and "PLACEMENT_OPTIONS" not in form:
        form = {"PLACEMENT_OPTIONS": '{"LINE":1}'}
    r = await page.http.post(page.url + OPEN, data=form)
    assert r.status_code == status and "text/html" in r.headers["content-type"]
    assert grpc_calls(page) == []


async def test_a_json_body_is_refused_before_anything(page: Page) -> None:
    r = await page.http.post(page.url + ACTION, json={"session": page.session(), "action": "show"})
    assert r.status_code == 400 and grpc_calls(page) == []
