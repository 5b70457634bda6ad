"""The fake token-keeper: static portals and channel credentials in memory. With ``sandbox_url`` it refreshes
through the Bitrix24 stand-in's OAuth server on ReportTokenRejected, as the real token-keeper does."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx
from zaptrix.v1 import token_keeper_pb2, token_keeper_pb2_grpc

from zaptrix_testing.fakes.calls import Recorder, found


@dataclass
class Portal:
    member_id: str
    application_token: str
    access_token: str = "access-1"
    refresh_token: str = "refresh-1"
    client_endpoint: str = "https://portal.example.com/rest/"
    domain: str = "portal.example.com"


class FakeTokenKeeper(Recorder, token_keeper_pb2_grpc.TokenKeeperServicer):
    def __init__(self, sandbox_url: str = "", client_id: str = "", client_secret: str = "") -> None:
        super().__init__()
        self.portals: dict[str, Portal] = {}
        self.channels: dict[str, token_keeper_pb2.ChannelCredentials] = {}
        self.upserts: list[token_keeper_pb2.UpsertPortalRequest] = []
        self.rejections: list[token_keeper_pb2.ReportTokenRejectedRequest] = []
        self.sandbox_url = sandbox_url
        self.client_id = client_id
        self.client_secret = client_secret
        self._lock = asyncio.Lock()

    def clear(self) -> None:
        """Forget all state, calls and scripted failures."""
        self.portals.clear()
        self.channels.clear()
        self.upserts.clear()
        self.rejections.clear()
        self.forget_calls()

    def add(self, portal: Portal) -> Portal:
        self.portals[portal.member_id] = portal
        return portal

    def add_channel(self, phone_number_id: str, **fields: str) -> token_keeper_pb2.ChannelCredentials:
        creds = token_keeper_pb2.ChannelCredentials(phone_number_id=phone_number_id, **fields)
        self.channels[phone_number_id] = creds
        return creds

    def _token(self, p: Portal) -> token_keeper_pb2.AccessToken:
        out = token_keeper_pb2.AccessToken(
            member_id=p.member_id, access_token=p.access_token, client_endpoint=p.client_endpoint
        )
        out.expires_at.FromSeconds(int(time.time()) + 3000)
        return out

    async def _portal(self, member_id: str, context: Any) -> Portal:
        return await found(context, self.portals.get(member_id), "portal")

    # --- portals -----------------------------------------------------------------------------------

    async def VerifyApplicationToken(self, request: Any, context: Any) -> Any:
        await self._enter("VerifyApplicationToken", request, context, request.member_id)
        p = self.portals.get(request.member_id)
        return token_keeper_pb2.VerifyApplicationTokenResponse(
            known_portal=p is not None,
            valid=p is not None and p.application_token == request.application_token,
        )

    async def GetAccessToken(self, request: Any, context: Any) -> Any:
        await self._enter("GetAccessToken", request, context, request.member_id)
        return self._token(await self._portal(request.member_id, context))

    async def ReportTokenRejected(self, request: Any, context: Any) -> Any:
        await self._enter("ReportTokenRejected", request, context, request.member_id)
        self.rejections.append(request)
        async with self._lock:
            p = await self._portal(request.member_id, context)
            if request.access_token == p.access_token:  # not refreshed meanwhile by another caller
                if self.sandbox_url:
                    async with httpx.AsyncClient() as http:
                        resp = await http.get(
                            f"{self.sandbox_url}/oauth/token/",
                            params={
                                "grant_type": "refresh_token",
                                "client_id": self.client_id,
                                "client_secret": self.client_secret,
                                "refresh_token": p.refresh_token,
                            },
                        )
                        resp.raise_for_status()
                        body = resp.json()
                    p.access_token, p.refresh_token = body["access_token"], body["refresh_token"]
                else:
                    p.access_token = f"{p.access_token}-r"
            return self._token(p)

    async def UpsertPortal(self, request: Any, context: Any) -> Any:
        await self._enter("UpsertPortal", request, context, request.member_id)
        self.upserts.append(request)
        old = self.portals.get(request.member_id)
        self.portals[request.member_id] = Portal(
            member_id=request.member_id,
            application_token=request.application_token or (old.application_token if old else ""),
            access_token=request.access_token,
            refresh_token=request.refresh_token,
            client_endpoint=request.client_endpoint,
            domain=request.domain,
        )
        return self._status(self.portals[request.member_id])

    async def GetPortalStatus(self, request: Any, context: Any) -> Any:
        await self._enter("GetPortalStatus", request, context, request.member_id)
        return self._status(await self._portal(request.member_id, context))

    async def ListPortals(self, request: Any, context: Any) -> Any:
        await self._enter("ListPortals", request, context)
        return token_keeper_pb2.ListPortalsResponse(portals=[self._status(p) for p in self.portals.values()])

    @staticmethod
    def _status(p: Portal) -> token_keeper_pb2.PortalStatus:
        return token_keeper_pb2.PortalStatus(
            member_id=p.member_id,
            domain=p.domain,
            client_endpoint=p.client_endpoint,
            state=token_keeper_pb2.PORTAL_STATE_ACTIVE,
        )

    # --- WhatsApp channel credentials --------------------------------------------------------------

    async def UpsertChannelCredentials(self, request: Any, context: Any) -> Any:
        await self._enter("UpsertChannelCredentials", request, context, request.phone_number_id)
        old = self.channels.get(request.phone_number_id) or token_keeper_pb2.ChannelCredentials()
        creds = self.add_channel(
            request.phone_number_id,
            # empty: keep the stored one
            access_token=request.access_token or old.access_token,
            app_secret=request.app_secret or old.app_secret,
            verify_token=request.verify_token or old.verify_token,
            waba_id=request.waba_id,
        )
        return token_keeper_pb2.ChannelCredentialsStatus(
            phone_number_id=creds.phone_number_id,
            waba_id=creds.waba_id,
            has_access_token=bool(creds.access_token),
            has_app_secret=bool(creds.app_secret),
            has_verify_token=bool(creds.verify_token),
        )

    async def GetChannelCredentials(self, request: Any, context: Any) -> Any:
        await self._enter("GetChannelCredentials", request, context, request.phone_number_id)
        return await found(context, self.channels.get(request.phone_number_id), "channel")

    async def GetWabaAppSecret(self, request: Any, context: Any) -> Any:
        """As the real one: the lowest phone_number_id of the WABA's channels that hold an app secret."""
        await self._enter("GetWabaAppSecret", request, context, request.waba_id)
        signers = sorted(
            (c for c in self.channels.values() if c.waba_id == request.waba_id and c.app_secret),
            key=lambda c: c.phone_number_id,
        )
        c = await found(context, signers[0] if request.waba_id and signers else None, "WABA")
        return token_keeper_pb2.WabaAppSecret(
            waba_id=c.waba_id, phone_number_id=c.phone_number_id, app_secret=c.app_secret
        )

    async def CheckVerifyToken(self, request: Any, context: Any) -> Any:
        await self._enter("CheckVerifyToken", request, context)
        valid = any(c.verify_token == request.verify_token for c in self.channels.values())
        return token_keeper_pb2.CheckVerifyTokenResponse(valid=valid)
