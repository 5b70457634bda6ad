"""Install forgery (review C2, H1, M2, L6): only Bitrix24's OAuth server can vouch for an install.

Each test plays one attack against the whole system (`system` fixture): the sandbox Bitrix24 stand-in is
both the portals and their OAuth server; the attacker's own "portal" is a tiny HTTP server in the test.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
from zaptrix.v1 import token_keeper_pb2, token_keeper_pb2_grpc
from zaptrix_testing.seeding import SANDBOX_MEMBER_ID

from tests.system import System

INSTALL = "/webhooks/bitrix24/install"
SANDBOX_APP_TOKEN = "sandbox-app-token"


class _Evil(BaseHTTPRequestHandler):
    """The attacker's "portal": every REST method succeeds; app.info answers what the test says."""

    hits: list[str]
    app_info: tuple[int, dict[str, Any]]

    def do_POST(self) -> None:
        self.server.hits.append(self.path)  # type: ignore[attr-defined]
        if self.path.startswith("/rest/app.info"):
            status, body = self.server.app_info  # type: ignore[attr-defined]
        elif self.path.startswith("/rest/event.get"):
            status, body = 200, {"result": []}
        else:
            status, body = 200, {"result": True}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def evil_portal() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Evil)
    server.hits = []  # type: ignore[attr-defined]
    server.app_info = (200, {"result": {"ID": 1, "CODE": "whatever", "INSTALLED": True}})  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _endpoint(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/rest/"


def install_form(member_id: str, endpoint: str, **auth: str) -> dict[str, str]:
    form = {
        "event": "ONAPPINSTALL",
        "data[VERSION]": "1",
        "data[ACTIVE]": "Y",
        "data[INSTALLED]": "Y",
        "ts": str(int(time.time())),
        "auth[member_id]": member_id,
        "auth[domain]": endpoint.split("/")[2],
        "auth[client_endpoint]": endpoint,
        "auth[server_endpoint]": endpoint,
        "auth[access_token]": "attacker-access",
        "auth[refresh_token]": "attacker-refresh",
        "auth[application_token]": "attacker-app-token",
        "auth[expires_in]": "3600",
    }
    form.update({f"auth[{k}]": v for k, v in auth.items()})
    return form


async def portal_status(system: System, member_id: str) -> token_keeper_pb2.PortalStatus | None:
    async with system.local.grpc_channel("token-keeper") as channel:
        stub = token_keeper_pb2_grpc.TokenKeeperStub(channel)
        try:
            return await stub.GetPortalStatus(token_keeper_pb2.GetPortalStatusRequest(member_id=member_id))
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise


async def app_token_valid(system: System, member_id: str, token: str) -> bool:
    async with system.local.grpc_channel("token-keeper") as channel:
        stub = token_keeper_pb2_grpc.TokenKeeperStub(channel)
        resp = await stub.VerifyApplicationToken(
            token_keeper_pb2.VerifyApplicationTokenRequest(member_id=member_id, application_token=token)
        )
        return bool(resp.valid)


async def new_sandbox_portal(system: System) -> dict[str, Any]:
    """A second portal of the stand-in with our app, not installed (nothing stored in token-keeper)."""
    member = f"sec-{uuid.uuid4().hex[:12]}"
    resp = await system.bitrix.post(
        "/_sandbox/portals",
        json={"member_id": member, "domain": f"{member}.bitrix24.com", "application_token": f"{member}-app"},
    )
    assert resp.status_code == 201, resp.text
    portal: dict[str, Any] = resp.json()
    return portal


async def sandbox_tokens(system: System, member_id: str, **spec: Any) -> dict[str, Any]:
    resp = await system.bitrix.post(f"/_sandbox/portals/{member_id}/tokens", json=spec)
    assert resp.status_code == 200, resp.text
    tokens: dict[str, Any] = resp.json()
    return tokens


async def test_an_install_verified_only_by_the_attackers_own_server_is_refused(
    system: System, evil_portal: ThreadingHTTPServer
) -> None:
    """C2: a random member_id whose client_endpoint is the attacker's server, which answers app.info OK."""
    member = f"evil-{uuid.uuid4().hex[:12]}"
    resp = await system.bitrix_web.post(INSTALL, data=install_form(member, _endpoint(evil_portal)))
    assert resp.status_code in (401, 403), resp.text
    assert await portal_status(system, member) is None
    assert not [h for h in evil_portal.hits if "app.info" not in h], evil_portal.hits  # type: ignore[attr-defined]


async def test_a_token_of_another_app_is_refused(system: System) -> None:
    """C2: a genuine token of the portal, but issued to another app (client id) than ours."""
    portal = await new_sandbox_portal(system)
    other = await sandbox_tokens(system, portal["member_id"], client_id="local.other.app", user_id=1)
    resp = await system.bitrix_web.post(
        INSTALL,
        data=install_form(
            portal["member_id"],
            portal["client_endpoint"],
            access_token=other["access_token"],
            refresh_token=other["refresh_token"],
            domain=portal["domain"],
        ),
    )
    assert resp.status_code in (401, 403), resp.text
    assert await portal_status(system, portal["member_id"]) is None


async def test_a_forged_install_for_a_known_portal_changes_nothing(
    system: System, evil_portal: ThreadingHTTPServer
) -> None:
    """H1: a non-admin user's token of our app on a known portal, another endpoint, a new application_token."""
    before = await portal_status(system, SANDBOX_MEMBER_ID)
    assert before is not None
    user = await sandbox_tokens(system, SANDBOX_MEMBER_ID, user_id=27)
    assert user["admin"] is False
    resp = await system.bitrix_web.post(
        INSTALL,
        data=install_form(
            SANDBOX_MEMBER_ID,
            _endpoint(evil_portal),
            access_token=user["access_token"],
            refresh_token=user["refresh_token"],
            application_token="attacker-app-token",
            expires="99999999999",
        ),
    )
    assert resp.status_code in (401, 403), resp.text
    after = await portal_status(system, SANDBOX_MEMBER_ID)
    assert after is not None
    assert after.client_endpoint == before.client_endpoint
    assert after.access_expires_at == before.access_expires_at
    assert after.refresh_obtained_at == before.refresh_obtained_at
    assert not await app_token_valid(system, SANDBOX_MEMBER_ID, "attacker-app-token")
    assert await app_token_valid(system, SANDBOX_MEMBER_ID, SANDBOX_APP_TOKEN)
    # Bitrix24's real events (the old application_token) are still accepted.
    event = await system.bitrix_web.post(
        "/webhooks/bitrix24/outbound",
        data={
            "event": "ONIMCONNECTORSTATUSDELETE",
            "data[connector]": "some_other_connector",
            "data[line]": "999",
            "auth[member_id]": SANDBOX_MEMBER_ID,
            "auth[application_token]": SANDBOX_APP_TOKEN,
            "auth[domain]": "sandbox.bitrix24.com",
        },
    )
    assert event.status_code == 200, event.text


async def test_a_huge_expires_is_capped(system: System) -> None:
    """H1: the installer's `expires` is the attacker's choice; the stored expiry is at most about an hour."""
    portal = await new_sandbox_portal(system)
    admin = await sandbox_tokens(system, portal["member_id"], user_id=1)
    resp = await system.bitrix_web.post(
        INSTALL,
        data=install_form(
            portal["member_id"],
            portal["client_endpoint"],
            access_token=admin["access_token"],
            refresh_token=admin["refresh_token"],
            application_token=portal["application_token"],
            domain=portal["domain"],
            expires="99999999999",
        ),
    )
    assert resp.status_code == 200, resp.text
    stored = await portal_status(system, portal["member_id"])
    assert stored is not None
    assert stored.access_expires_at.seconds <= time.time() + 3600 + 60


async def test_a_refusal_does_not_echo_the_remote_error(
    system: System, evil_portal: ThreadingHTTPServer
) -> None:
    """M2: an unauthenticated caller learns nothing about hosts it makes us contact (no error codes, hosts)."""
    evil_portal.app_info = (401, {"error": "INTERNAL_ORACLE_CODE", "error_description": "internal.svc"})  # type: ignore[attr-defined]
    member = f"evil-{uuid.uuid4().hex[:12]}"
    endpoint = _endpoint(evil_portal)
    resp = await system.bitrix_web.post(INSTALL, data=install_form(member, endpoint))
    assert resp.status_code in (401, 403), resp.text
    for leak in ("INTERNAL_ORACLE_CODE", "internal.svc", "invalid_token", "NO_AUTH_FOUND", "127.0.0.1"):
        assert leak not in resp.text, resp.text
