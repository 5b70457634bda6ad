"""gRPC translation: request validation, status codes, metrics. The work happens in MapperService."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NoReturn, TypeVar

import grpc
from zaptrix.database import DatabaseUnavailable
from zaptrix.logging import get_logger
from zaptrix.v1 import mapper_pb2 as pb
from zaptrix.v1 import mapper_pb2_grpc

from mapper import convert
from mapper.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    MapperError,
    NotFound,
)
from mapper.metrics import RPC_SECONDS, RPCS
from mapper.service import MapperService

log = get_logger(__name__)

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["Mapper"].full_name

_CODES: dict[type[Exception], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    DatabaseUnavailable: grpc.StatusCode.UNAVAILABLE,
}

S = TypeVar("S", bound="MapperServicer")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


async def _abort(context: Any, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("context.abort returned")  # pragma: no cover


def rpc(
    handler: Callable[[S, Req], Awaitable[Resp]],
) -> Callable[[S, Req, Any], Coroutine[Any, Any, Resp]]:
    """Times the handler, maps domain errors to status codes, and turns any other exception into
    INTERNAL (logged) instead of grpc's opaque UNKNOWN."""
    method = handler.__name__

    @functools.wraps(handler)
    async def wrapper(self: S, request: Req, context: Any) -> Resp:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return await handler(self, request)
        except (MapperError, DatabaseUnavailable) as exc:
            code = _CODES.get(type(exc), grpc.StatusCode.INTERNAL)
            if code is grpc.StatusCode.UNAVAILABLE:
                # Debug only: during an outage this fires for every request. The outage itself is logged
                # by the health watcher and the pool's reconnect loop, and counted in zaptrix_mapper_rpcs_total.
                log.debug("rpc unavailable", method=method, error=str(exc))
            await _abort(context, code, str(exc))
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("rpc failed", method=method)
            await _abort(context, code, "internal error")
        finally:
            RPCS.labels(method, code.name).inc()
            RPC_SECONDS.labels(method).observe(time.perf_counter() - started)

    return wrapper


class MapperServicer(mapper_pb2_grpc.MapperServicer):
    def __init__(self, service: MapperService) -> None:
        self.service = service

    # channel bindings

    @rpc
    async def BindChannel(self, request: pb.BindChannelRequest) -> pb.Channel:
        if not request.HasField("channel"):
            raise InvalidArgument("channel is required")
        return convert.channel_pb(await self.service.bind_channel(convert.channel_spec(request.channel)))

    @rpc
    async def GetChannel(self, request: pb.GetChannelRequest) -> pb.Channel:
        phone_number_id = convert.required(request.phone_number_id, "phone_number_id")
        return convert.channel_pb(await self.service.get_channel(phone_number_id))

    @rpc
    async def ListChannels(self, request: pb.ListChannelsRequest) -> pb.ListChannelsResponse:
        member_id = convert.optional(request.member_id, "member_id")
        channels = await self.service.list_channels(member_id)
        return pb.ListChannelsResponse(channels=[convert.channel_pb(c) for c in channels])

    # conversations

    @rpc
    async def GetOrCreateConversation(
        self, request: pb.GetOrCreateConversationRequest
    ) -> pb.GetOrCreateConversationResponse:
        conversation, created = await self.service.get_or_create_conversation(
            convert.required(request.phone_number_id, "phone_number_id"),
            convert.required(request.wa_id, "wa_id"),
            convert.optional(request.contact_name, "contact_name", convert.MAX_TEXT),
        )
        return pb.GetOrCreateConversationResponse(
            conversation=convert.conversation_pb(conversation), created=created
        )

    @rpc
    async def FindConversation(self, request: pb.FindConversationRequest) -> pb.Conversation:
        by = request.WhichOneof("by")
        if by == "id":
            found = await self.service.conversation_by_id(convert.conversation_id(request.id))
        elif by == "channel_customer":
            cc = request.channel_customer
            found = await self.service.conversation_by_customer(
                convert.required(cc.phone_number_id, "channel_customer.phone_number_id"),
                convert.required(cc.wa_id, "channel_customer.wa_id"),
            )
        elif by == "bitrix_chat":
            chat = request.bitrix_chat
            found = await self.service.conversation_by_bitrix_chat(
                convert.required(chat.member_id, "bitrix_chat.member_id"),
                convert.required(chat.bitrix_chat_id, "bitrix_chat.bitrix_chat_id"),
            )
        elif by == "portal_external_chat":
            pec = request.portal_external_chat
            found = await self.service.conversation_by_portal_external_chat(
                convert.required(pec.member_id, "portal_external_chat.member_id"),
                convert.required(pec.external_chat_id, "portal_external_chat.external_chat_id"),
            )
        else:
            raise InvalidArgument("set one of id, channel_customer, bitrix_chat, portal_external_chat")
        return convert.conversation_pb(found)

    @rpc
    async def UpdateConversation(self, request: pb.UpdateConversationRequest) -> pb.Conversation:
        update = convert.conversation_update(request)
        return convert.conversation_pb(await self.service.update_conversation(update))

    # message links

    @rpc
    async def LinkMessage(self, request: pb.LinkMessageRequest) -> pb.MessageLink:
        if not request.HasField("link"):
            raise InvalidArgument("link is required")
        return convert.link_pb(await self.service.link_message(convert.link_spec(request.link)))

    @rpc
    async def FindMessageLink(self, request: pb.FindMessageLinkRequest) -> pb.MessageLink:
        by = request.WhichOneof("by")
        if by == "wamid":
            found = await self.service.link_by_wamid(convert.required(request.wamid, "wamid"))
        elif by == "bitrix_message":
            msg = request.bitrix_message
            found = await self.service.link_by_bitrix_message(
                convert.required(msg.member_id, "bitrix_message.member_id"),
                convert.required(msg.bitrix_message_id, "bitrix_message.bitrix_message_id"),
            )
        else:
            raise InvalidArgument("set one of wamid, bitrix_message")
        return convert.link_pb(found)

    @rpc
    async def UpdateMessageStatus(self, request: pb.UpdateMessageStatusRequest) -> pb.MessageLink:
        wamid, whatsapp_status, bitrix_status = convert.status_update(request)
        return convert.link_pb(
            await self.service.update_message_status(wamid, whatsapp_status, bitrix_status)
        )

    # dedupe

    @rpc
    async def CheckProcessed(self, request: pb.CheckProcessedRequest) -> pb.CheckProcessedResponse:
        result = await self.service.check_processed(convert.required(request.event_id, "event_id"))
        return pb.CheckProcessedResponse(processed=result is not None, result=result or "")

    @rpc
    async def MarkProcessed(self, request: pb.MarkProcessedRequest) -> pb.MarkProcessedResponse:
        already = await self.service.mark_processed(
            convert.required(request.event_id, "event_id"),
            convert.checked(request.result, "result", convert.MAX_RESULT),
        )
        return pb.MarkProcessedResponse(already_processed=already)

    # one delivered inbound message

    @rpc
    async def RecordDelivery(self, request: pb.RecordDeliveryRequest) -> pb.RecordDeliveryResponse:
        if not request.HasField("link") or not request.link.HasField("link"):
            raise InvalidArgument("link.link is required")
        if not request.HasField("conversation"):
            raise InvalidArgument("conversation is required")
        if not request.HasField("processed"):
            raise InvalidArgument("processed is required")
        spec = convert.link_spec(request.link.link)
        update = convert.conversation_update(request.conversation)
        if spec.conversation_id != update.id:
            raise InvalidArgument("link.link.conversation_id and conversation.id differ")
        event_id = convert.required(request.processed.event_id, "processed.event_id")
        result = convert.checked(request.processed.result, "processed.result", convert.MAX_RESULT)
        link, conversation, already = await self.service.record_delivery(spec, update, event_id, result)
        return pb.RecordDeliveryResponse(
            link=convert.link_pb(link),
            conversation=convert.conversation_pb(conversation),
            already_processed=already,
        )
