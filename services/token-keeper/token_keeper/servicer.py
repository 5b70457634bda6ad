"""gRPC face of TokenService: request/response mapping and status codes. Error details never carry secrets."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import SecretStr
from zaptrix.grpchandler import StatusTable, rpc_decorator
from zaptrix.v1 import token_keeper_pb2 as pb
from zaptrix.v1 import token_keeper_pb2_grpc as pb_grpc

from token_keeper import metrics
from token_keeper.errors import (
    CredentialsUnreadable,
    InvalidInput,
    NotFound,
    PortalUnusable,
    RefreshUnavailable,
)
from token_keeper.model import ChannelUpsert, IssuedToken, PortalUpsert
from token_keeper.repository import STATE_ACTIVE, STATE_NEEDS_REAUTH, STATE_UNINSTALLED, ChannelRow, PortalRow
from token_keeper.service import TokenService

_STATES = {
    STATE_ACTIVE: pb.PORTAL_STATE_ACTIVE,
    STATE_NEEDS_REAUTH: pb.PORTAL_STATE_NEEDS_REAUTH,
    STATE_UNINSTALLED: pb.PORTAL_STATE_UNINSTALLED,
}
_ERRORS: StatusTable = [
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (PortalUnusable, grpc.StatusCode.FAILED_PRECONDITION),
    (RefreshUnavailable, grpc.StatusCode.UNAVAILABLE),
    (CredentialsUnreadable, grpc.StatusCode.INTERNAL),
]


def _ts(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def _secret(value: str) -> SecretStr | None:
    return SecretStr(value) if value else None


def portal_status(row: PortalRow) -> pb.PortalStatus:
    return pb.PortalStatus(
        member_id=row.member_id,
        domain=row.domain,
        client_endpoint=row.client_endpoint,
        state=_STATES.get(row.state, pb.PORTAL_STATE_UNSPECIFIED),
        access_expires_at=_ts(row.access_expires_at),
        refresh_obtained_at=_ts(row.refresh_obtained_at),
        last_refresh_at=_ts(row.last_refresh_at),
        last_error=row.last_error,
        refresh_count=row.refresh_count,
    )


def channel_status(row: ChannelRow) -> pb.ChannelCredentialsStatus:
    return pb.ChannelCredentialsStatus(
        phone_number_id=row.phone_number_id,
        waba_id=row.waba_id,
        has_access_token=row.access_token_enc is not None,
        has_app_secret=row.app_secret_enc is not None,
        has_verify_token=row.verify_token_enc is not None,
        updated_at=_ts(row.updated_at),
    )


def _access_token(tok: IssuedToken) -> pb.AccessToken:
    return pb.AccessToken(
        member_id=tok.member_id,
        access_token=tok.access_token.get_secret_value(),
        expires_at=_ts(tok.expires_at),
        client_endpoint=tok.client_endpoint,
    )


def _observe(method: str, code: grpc.StatusCode, seconds: float) -> None:
    metrics.RPC_SECONDS.labels(method, code.name).observe(seconds)


rpc = rpc_decorator(_ERRORS, _observe)


class TokenKeeperServicer(pb_grpc.TokenKeeperServicer):
    def __init__(self, service: TokenService) -> None:
        self.service = service

    @rpc
    async def UpsertPortal(self, request: pb.UpsertPortalRequest) -> pb.PortalStatus:
        row = await self.service.upsert_portal(
            PortalUpsert(
                member_id=request.member_id,
                domain=request.domain,
                client_endpoint=request.client_endpoint,
                server_endpoint=request.server_endpoint,
                client_id=request.client_id,
                client_secret=_secret(request.client_secret),
                access_token=_secret(request.access_token),
                refresh_token=_secret(request.refresh_token),
                access_expires_at=request.access_expires_at.ToDatetime(tzinfo=UTC)
                if request.HasField("access_expires_at")
                else None,
                application_token=_secret(request.application_token),
                scope=request.scope,
            )
        )
        return portal_status(row)

    @rpc
    async def GetPortalStatus(self, request: pb.GetPortalStatusRequest) -> pb.PortalStatus:
        return portal_status(await self.service.get_portal(request.member_id))

    @rpc
    async def ListPortals(self, request: pb.ListPortalsRequest) -> pb.ListPortalsResponse:
        return pb.ListPortalsResponse(portals=[portal_status(r) for r in await self.service.list_portals()])

    @rpc
    async def GetAccessToken(self, request: pb.GetAccessTokenRequest) -> pb.AccessToken:
        return _access_token(await self.service.get_access_token(request.member_id))

    @rpc
    async def ReportTokenRejected(self, request: pb.ReportTokenRejectedRequest) -> pb.AccessToken:
        return _access_token(
            await self.service.report_token_rejected(request.member_id, request.access_token, request.error)
        )

    @rpc
    async def VerifyApplicationToken(
        self, request: pb.VerifyApplicationTokenRequest
    ) -> pb.VerifyApplicationTokenResponse:
        valid, known = await self.service.verify_application_token(
            request.member_id, request.application_token
        )
        return pb.VerifyApplicationTokenResponse(valid=valid, known_portal=known)

    @rpc
    async def UpsertChannelCredentials(
        self, request: pb.UpsertChannelCredentialsRequest
    ) -> pb.ChannelCredentialsStatus:
        row = await self.service.upsert_channel(
            ChannelUpsert(
                phone_number_id=request.phone_number_id,
                waba_id=request.waba_id,
                access_token=_secret(request.access_token),
                app_secret=_secret(request.app_secret),
                verify_token=_secret(request.verify_token),
            )
        )
        return channel_status(row)

    @rpc
    async def GetChannelCredentials(self, request: pb.GetChannelCredentialsRequest) -> pb.ChannelCredentials:
        row, secrets = await self.service.get_channel(request.phone_number_id)

        def plain(v: SecretStr | None) -> str:
            return "" if v is None else v.get_secret_value()

        return pb.ChannelCredentials(
            phone_number_id=row.phone_number_id,
            waba_id=row.waba_id,
            access_token=plain(secrets.access_token),
            app_secret=plain(secrets.app_secret),
            verify_token=plain(secrets.verify_token),
        )

    @rpc
    async def GetWabaAppSecret(self, request: pb.GetWabaAppSecretRequest) -> pb.WabaAppSecret:
        row, secret = await self.service.waba_app_secret(request.waba_id)
        return pb.WabaAppSecret(
            waba_id=row.waba_id, phone_number_id=row.phone_number_id, app_secret=secret.get_secret_value()
        )

    @rpc
    async def CheckVerifyToken(self, request: pb.CheckVerifyTokenRequest) -> pb.CheckVerifyTokenResponse:
        return pb.CheckVerifyTokenResponse(valid=await self.service.check_verify_token(request.verify_token))


SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TokenKeeper"].full_name


def register(service: TokenService) -> Callable[[grpc.aio.Server], list[str]]:
    def add(server: grpc.aio.Server) -> list[str]:
        pb_grpc.add_TokenKeeperServicer_to_server(TokenKeeperServicer(service), server)
        return [SERVICE_NAME]

    return add
