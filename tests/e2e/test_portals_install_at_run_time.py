"""Several tenants: portals added to the Bitrix24 stand-in at run time install through the real, verified
install flow (the stand-in is their OAuth server), whichever app.info layout the OAuth server answers."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

import pytest
from zaptrix.v1 import token_keeper_pb2, token_keeper_pb2_grpc

from tests.system import System


async def stored_portal(system: System, member_id: str) -> token_keeper_pb2.PortalStatus:
    async with system.local.grpc_channel("token-keeper") as channel:
        stub = token_keeper_pb2_grpc.TokenKeeperStub(channel)
        return await stub.GetPortalStatus(token_keeper_pb2.GetPortalStatusRequest(member_id=member_id))


@pytest.mark.parametrize("layout", ["full", "minimal"])
async def test_a_portal_added_at_run_time_installs(system: System, layout: str) -> None:
    member = f"tenant-{uuid.uuid4().hex[:10]}"
    domain = f"{member}.bitrix24.com"
    await system.bitrix.post("/_sandbox/config", json={"oauth_app_info": layout})
    try:
        resp = await system.bitrix.post(
            "/_sandbox/portals", json={"member_id": member, "domain": domain, "line_id": 5}
        )
        assert resp.status_code == 201, resp.text
        installed = (await system.bitrix.post(f"/_sandbox/portals/{member}/install")).json()
        assert installed["status_code"] == 200, installed
    finally:
        await system.bitrix.post("/_sandbox/config", json={"oauth_app_info": "full"})
    stored = await stored_portal(system, member)
    portal = (await system.bitrix.get(f"/_sandbox/portals/{member}")).json()
    assert stored.client_endpoint == portal["client_endpoint"]
    # The domain is the OAuth server's word: named by app.info, else the host of the client_endpoint
    # (all stand-in portals share one endpoint host).
    assert stored.domain == (domain if layout == "full" else urlsplit(portal["client_endpoint"]).hostname)
    assert stored.state == token_keeper_pb2.PORTAL_STATE_ACTIVE
    assert "zaptrix_whatsapp" in portal["connectors"]  # the setup ran with the verified token
