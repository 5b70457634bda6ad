"""gRPC face of TokenService: request/response mapping and status codes. Error details never carry secrets."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import wraps
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import SecretStr
from zaptrix.logging import get_logger
from zaptrix.v1 import token_keeper_pb2 as pb
from zaptrix.v1 import token_keeper_pb2_grpc as pb_grpc

from token_keeper import metrics
from token_keeper.errors import (
    CredentialsUnreadable,
    DatabaseUnavailable,
    InvalidInput,
    NotFound,
    PortalUnusable,
    RefreshUnavailable,
)
from token_keeper.model import ChannelUpsert, IssuedToken, PortalUpsert
from token_keeper.repository import STATE_ACTIVE, STATE_NEEDS_REAUTH, STATE_UNINSTALLED, ChannelRow, PortalRow
from token_keeper.service import TokenService

log = get_logger(__name__)

_STATES = {
    STATE_ACTIVE: pb.PORTAL_STATE_ACTIVE,
    STATE_NEEDS_REAUTH: pb.PORTAL_STATE_NEEDS_REAUTH,
    STATE_UNINSTALLED: pb.PORTAL_STATE_UNINSTALLED,
}
_ERRORS: list[tuple[type[Exception], grpc.StatusCode]] = [
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (PortalUnusable, grpc.StatusCode.FAILED_PRECONDITION),
    (RefreshUnavailable, grpc.StatusCode.UNAVAILABLE),
    (CredentialsUnreadable, grpc.StatusCode.INTERNAL),
    (DatabaseUnavailable, grpc.StatusCode.UNAVAILABLE),
]

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]


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


def rpc(fn: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Maps service errors to status codes, times the call; unexpected errors become a bare INTERNAL."""
    method = fn.__name__

    @wraps(fn)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        t0 = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return await fn(self, request, context)
        except Exception as exc:
            for kind, status in _ERRORS:
                if isinstance(exc, kind):
                    code = status
                    break
            else:
                code = grpc.StatusCode.INTERNAL
                # Type only: exception texts of drivers may quote parameters.
                log.error("unexpected error", method=method, error_type=type(exc).__name__)
                await context.abort(code, "internal error")
            await context.abort(code, str(exc))
            raise  # unreachable: abort raises
        finally:
            metrics.RPC_SECONDS.labels(method, code.name).observe(time.perf_counter() - t0)

    return wrapper


class TokenKeeperServicer(pb_grpc.TokenKeeperServicer):
    def __init__(self, service: TokenService) -> None:
        self.service = service

    @rpc
    async def UpsertPortal(
        self, request: pb.UpsertPortalRequest, context: grpc.aio.ServicerContext
    ) -> pb.PortalStatus:
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
    async def GetPortalStatus(
        self, request: pb.GetPortalStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.PortalStatus:
        return portal_status(await self.service.get_portal(request.member_id))

    @rpc
    async def ListPortals(
        self, request: pb.ListPortalsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListPortalsResponse:
        return pb.ListPortalsResponse(portals=[portal_status(r) for r in await self.service.list_portals()])

    @rpc
    async def GetAccessToken(
        self, request: pb.GetAccessTokenRequest, context: grpc.aio.ServicerContext
    ) -> pb.AccessToken:
        return _access_token(await self.service.get_access_token(request.member_id))

    @rpc
    async def ReportTokenRejected(
        self, request: pb.ReportTokenRejectedRequest, context: grpc.aio.ServicerContext
    ) -> pb.AccessToken:
        return _access_token(
            await self.service.report_token_rejected(request.member_id, request.access_token, request.error)
        )

    @rpc
    async def VerifyApplicationToken(
        self, request: pb.VerifyApplicationTokenRequest, context: grpc.aio.ServicerContext
    ) -> pb.VerifyApplicationTokenResponse:
        valid, known = await self.service.verify_application_token(
            request.member_id, request.application_token
        )
        return pb.VerifyApplicationTokenResponse(valid=valid, known_portal=known)

    @rpc
    async def UpsertChannelCredentials(
        self, request: pb.UpsertChannelCredentialsRequest, context: grpc.aio.ServicerContext
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
    async def GetChannelCredentials(
        self, request: pb.GetChannelCredentialsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ChannelCredentials:
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
    async def CheckVerifyToken(
        self, request: pb.CheckVerifyTokenRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckVerifyTokenResponse:
        return pb.CheckVerifyTokenResponse(valid=await self.service.check_verify_token(request.verify_token))


SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TokenKeeper"].full_name


def register(service: TokenService) -> Callable[[grpc.aio.Server], list[str]]:
    def add(server: grpc.aio.Server) -> list[str]:
        pb_grpc.add_TokenKeeperServicer_to_server(TokenKeeperServicer(service), server)
        return [SERVICE_NAME]

    return add
