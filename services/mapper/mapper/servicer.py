"""gRPC translation: request validation, status codes, metrics. The work happens in MapperService."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import grpc
from google.protobuf.message import Message
from zaptrix.grpchandler import StatusTable, rpc_decorator, status_of
from zaptrix.v1 import mapper_pb2 as pb
from zaptrix.v1 import mapper_pb2_grpc

from mapper import convert, templates
from mapper.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    MapperError,
    NotFound,
)
from mapper.metrics import RPC_SECONDS, RPCS
from mapper.model import Conversation, ConversationUpdate, LinkSpec, MessageLink
from mapper.service import MapperService

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["Mapper"].full_name

_CODES: StatusTable = [
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
]


def _observe(method: str, code: grpc.StatusCode, seconds: float) -> None:
    RPCS.labels(method, code.name).inc()
    RPC_SECONDS.labels(method).observe(seconds)


rpc = rpc_decorator(_CODES, _observe)
MAX_BATCH = 1000  # items of one CheckProcessedMany / RecordDeliveries

Delivery = tuple[LinkSpec, ConversationUpdate, str, str]


def _required(request: Message, by: str, first: str, second: str) -> tuple[str, str]:
    """The two fields of the lookup key `by` (a oneof member of the request), both required."""
    key = getattr(request, by)
    return (
        convert.required(getattr(key, first), f"{by}.{first}"),
        convert.required(getattr(key, second), f"{by}.{second}"),
    )


class MapperServicer(mapper_pb2_grpc.MapperServicer):
    def __init__(self, service: MapperService) -> None:
        self.service = service

    # channel bindings

    @rpc
    async def BindChannel(self, request: pb.BindChannelRequest) -> pb.Channel:
        spec = convert.channel_spec(convert.present(request, "channel"))
        return convert.channel_pb(await self.service.bind_channel(spec))

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
        identity = convert.customer_identity(
            request.wa_id, request.user_id, request.parent_user_id, request.username
        )
        resolved = await self.service.resolve_customer(
            convert.required(request.phone_number_id, "phone_number_id"),
            identity,
            convert.optional(request.contact_name, "contact_name", convert.MAX_TEXT),
        )
        return pb.GetOrCreateConversationResponse(
            conversation=convert.conversation_pb(resolved.conversation),
            created=resolved.created,
            merged_conversation_ids=[str(i) for i in resolved.merged],
        )

    @rpc
    async def ApplyIdentityChange(self, request: pb.IdentityChangeRequest) -> pb.IdentityChangeResponse:
        previous = convert.customer_identity(
            request.previous_wa_id,
            request.previous_user_id,
            request.previous_parent_user_id,
            "",
            need_key=False,
        )
        new = convert.customer_identity(request.wa_id, request.user_id, request.parent_user_id, "")
        if not previous.aliases():
            raise InvalidArgument("previous_user_id or previous_wa_id is required")
        resolved = await self.service.apply_identity_change(
            convert.required(request.phone_number_id, "phone_number_id"), previous, new
        )
        return pb.IdentityChangeResponse(
            conversation=convert.conversation_pb(resolved.conversation),
            merged_conversation_ids=[str(i) for i in resolved.merged],
        )

    @rpc
    async def FindConversationByIdentityAlias(
        self, request: pb.FindConversationByIdentityAliasRequest
    ) -> pb.Conversation:
        kind = convert.ALIAS_KIND_FROM_PB.get(request.kind)
        if kind is None:
            raise InvalidArgument("kind is required")
        found = await self.service.conversation_by_identity_alias(
            convert.required(request.phone_number_id, "phone_number_id"),
            kind,
            convert.required(request.value, "value", 160),
        )
        return convert.conversation_pb(found)

    @rpc
    async def FindConversation(self, request: pb.FindConversationRequest) -> pb.Conversation:
        by = request.WhichOneof("by")
        service = self.service
        keys: dict[str, tuple[Callable[[str, str], Awaitable[Conversation]], str, str]] = {
            "channel_customer": (service.conversation_by_customer, "phone_number_id", "wa_id"),
            "bitrix_chat": (service.conversation_by_bitrix_chat, "member_id", "bitrix_chat_id"),
            "portal_external_chat": (
                service.conversation_by_portal_external_chat,
                "member_id",
                "external_chat_id",
            ),
        }
        if by == "id":
            found = await service.conversation_by_id(convert.conversation_id(request.id))
        elif by in keys:
            find, first, second = keys[by]
            found = await find(*_required(request, by, first, second))
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
        spec = convert.link_spec(convert.present(request, "link"))
        return convert.link_pb(await self.service.link_message(spec))

    @rpc
    async def FindMessageLink(self, request: pb.FindMessageLinkRequest) -> pb.MessageLink:
        by = request.WhichOneof("by")
        if by == "wamid":
            found = await self.service.link_by_wamid(convert.required(request.wamid, "wamid"))
        elif by == "bitrix_message":
            found = await self.service.link_by_bitrix_message(
                *_required(request, by, "member_id", "bitrix_message_id")
            )
        elif by == "latest_customer_message_of":
            found = await self.service.latest_customer_link(
                convert.conversation_id(request.latest_customer_message_of, "latest_customer_message_of")
            )
        else:
            raise InvalidArgument("set one of wamid, bitrix_message, latest_customer_message_of")
        return convert.link_pb(found)

    @rpc
    async def UpdateMessageStatus(self, request: pb.UpdateMessageStatusRequest) -> pb.MessageLink:
        wamid, whatsapp_status, bitrix_status = convert.status_update(request)
        priced = convert.priced(request, datetime.now(UTC))
        if priced is not None:  # counted in the ledger in the status's transaction
            found = await self.service.update_message_statuses(
                [(wamid, whatsapp_status, bitrix_status)], priced=[priced]
            )
            if not found:
                raise NotFound(f"no message link for wamid {wamid}")
            return convert.link_pb(found[0])
        return convert.link_pb(
            await self.service.update_message_status(wamid, whatsapp_status, bitrix_status)
        )

    # customer consent

    @rpc
    async def RecordCustomerConsent(self, request: pb.CustomerConsent) -> pb.CustomerConsent:
        return convert.consent_pb(await self.service.record_consent(convert.consent(request)))

    @rpc
    async def GetCustomerConsent(self, request: pb.GetCustomerConsentRequest) -> pb.CustomerConsent:
        phone_number_id = convert.required(request.phone_number_id, "phone_number_id")
        wa_id = convert.required(request.wa_id, "wa_id")
        category = convert.required(request.category, "category", 64)
        found = await self.service.get_consent(phone_number_id, wa_id, category)
        if found is None:  # nothing recorded: an empty value, not an error (most customers never opt out)
            return pb.CustomerConsent(phone_number_id=phone_number_id, wa_id=wa_id, category=category)
        return convert.consent_pb(found)

    # connector settings page

    @rpc
    async def GetChannelActivity(
        self, request: pb.GetChannelActivityRequest
    ) -> pb.GetChannelActivityResponse:
        member_id = convert.required(request.member_id, "member_id")
        if len(request.phone_number_ids) > MAX_BATCH:
            raise InvalidArgument(f"at most {MAX_BATCH} phone_number_ids")
        ids = [convert.required(p, "phone_number_ids[]") for p in request.phone_number_ids]
        found = await self.service.channel_activity(member_id, ids)
        return pb.GetChannelActivityResponse(channels=[convert.channel_activity_pb(a) for a in found])

    @rpc
    async def UnbindChannel(self, request: pb.UnbindChannelRequest) -> pb.Channel:
        phone_number_id = convert.required(request.phone_number_id, "phone_number_id")
        member_id = convert.required(request.member_id, "member_id")
        return convert.channel_pb(await self.service.unbind_channel(phone_number_id, member_id))

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
        link, conversation, already = await self.service.record_delivery(*_delivery(request))
        return _delivered(link, conversation, already)

    # the same, one poll batch at a time

    @rpc
    async def CheckProcessedMany(
        self, request: pb.CheckProcessedManyRequest
    ) -> pb.CheckProcessedManyResponse:
        ids = list(request.event_ids)
        if len(ids) > MAX_BATCH:
            raise InvalidArgument(f"more than {MAX_BATCH} event_ids")
        results = await self.service.check_processed_many(
            [convert.required(e, f"event_ids[{i}]") for i, e in enumerate(ids)]
        )
        return pb.CheckProcessedManyResponse(
            results=[pb.CheckProcessedResponse(processed=r is not None, result=r or "") for r in results]
        )

    @rpc
    async def FindMessageLinks(self, request: pb.FindMessageLinksRequest) -> pb.FindMessageLinksResponse:
        wamids = list(request.wamids)
        if len(wamids) > MAX_BATCH:
            raise InvalidArgument(f"more than {MAX_BATCH} wamids")
        found = await self.service.links_by_wamids(
            [convert.required(w, f"wamids[{i}]") for i, w in enumerate(wamids)]
        )
        return pb.FindMessageLinksResponse(links=[convert.link_pb(link) for link in found])

    @rpc
    async def UpdateMessageStatuses(
        self, request: pb.UpdateMessageStatusesRequest
    ) -> pb.UpdateMessageStatusesResponse:
        if len(request.updates) > MAX_BATCH:
            raise InvalidArgument(f"more than {MAX_BATCH} updates")
        marks = [
            (
                convert.required(u.processed.event_id, f"updates[{i}].processed.event_id"),
                convert.checked(u.processed.result, f"updates[{i}].processed.result", convert.MAX_RESULT),
            )
            for i, u in enumerate(request.updates)
            if u.HasField("processed")
        ]
        now = datetime.now(UTC)
        priced = [p for u in request.updates if (p := convert.priced(u, now)) is not None]
        found = await self.service.update_message_statuses(
            [convert.status_update(u) for u in request.updates], marks, priced
        )
        return pb.UpdateMessageStatusesResponse(links=[convert.link_pb(link) for link in found])

    @rpc
    async def RecordDeliveries(self, request: pb.RecordDeliveriesRequest) -> pb.RecordDeliveriesResponse:
        """One transaction for the list; when an item fails (invalid, conflicting link, no conversation),
        each valid item is recorded alone and every item answers as RecordDelivery would have."""
        if len(request.deliveries) > MAX_BATCH:
            raise InvalidArgument(f"more than {MAX_BATCH} deliveries")
        parsed: list[Delivery | MapperError] = []
        for item in request.deliveries:
            try:
                parsed.append(_delivery(item))
            except MapperError as exc:
                parsed.append(exc)
        valid = [p for p in parsed if not isinstance(p, MapperError)]
        if len(valid) == len(parsed) and valid:
            try:
                done = await self.service.record_deliveries(valid)
            except MapperError:
                pass  # one of them fails: each alone below, with its own answer
            else:
                return pb.RecordDeliveriesResponse(
                    results=[pb.RecordDeliveryResult(response=_delivered(*d)) for d in done]
                )
        results = []
        for p in parsed:
            if not isinstance(p, MapperError):
                try:
                    results.append(
                        pb.RecordDeliveryResult(response=_delivered(*await self.service.record_delivery(*p)))
                    )
                    continue
                except MapperError as exc:
                    p = exc
            code = status_of(p, _CODES)
            results.append(pb.RecordDeliveryResult(error_code=code.value[0], error_details=str(p)))
        return pb.RecordDeliveriesResponse(results=results)

    # data lifecycle

    @rpc
    async def SetPortalInstalled(
        self, request: pb.SetPortalInstalledRequest
    ) -> pb.SetPortalInstalledResponse:
        member_id = convert.required(request.member_id, "member_id")
        now = datetime.now(UTC)
        at = request.at.ToDatetime(tzinfo=UTC) if request.HasField("at") else now
        since, purge_after = await self.service.set_portal_installed(
            member_id, request.installed, min(at, now)
        )
        out = pb.SetPortalInstalledResponse()
        if since is not None and purge_after is not None:
            out.uninstalled_at.FromDatetime(since)
            out.purge_after.FromDatetime(purge_after)
        return out

    # --- template catalogue (issue 16, templates) ---------------------------------------------------

    @rpc
    async def ReplaceTemplates(self, request: pb.ReplaceTemplatesRequest) -> pb.ReplaceTemplatesResponse:
        pnid = convert.required(request.phone_number_id, "phone_number_id")
        waba_id = convert.required(request.waba_id, "waba_id")
        synced_at = (
            convert.timestamp(request.synced_at, "synced_at")
            if request.HasField("synced_at")
            else datetime.now(UTC)
        )
        rows = [templates.template(t, pnid, waba_id, synced_at) for t in request.templates]
        stored, removed = await self.service.templates.replace(pnid, waba_id, rows, synced_at)
        return pb.ReplaceTemplatesResponse(stored=stored, removed=removed)

    @rpc
    async def ApplyTemplateUpdate(self, request: pb.TemplateUpdate) -> pb.ApplyTemplateUpdateResponse:
        if not request.HasField("at"):
            raise InvalidArgument("at is required")
        update = templates.Update(
            waba_id=convert.required(request.waba_id, "waba_id"),
            template_id=convert.required(request.template_id, "template_id"),
            status=convert.checked(request.status, "status", 64),
            quality=convert.checked(request.quality, "quality", 64),
            category=convert.checked(request.category, "category", 64),
            at=convert.timestamp(request.at, "at"),
        )
        updated, channels = await self.service.templates.apply(update)
        return pb.ApplyTemplateUpdateResponse(updated=updated, phone_number_ids=channels)

    @rpc
    async def ListTemplates(self, request: pb.ListTemplatesRequest) -> pb.ListTemplatesResponse:
        found = await self.service.templates.list(
            convert.required(request.member_id, "member_id"),
            convert.required(request.phone_number_id, "phone_number_id"),
            request.approved_only,
            convert.checked(request.name, "name", convert.MAX_TEXT),
        )
        return pb.ListTemplatesResponse(templates=[templates.template_pb(t) for t in found])


def _delivery(request: pb.RecordDeliveryRequest) -> Delivery:
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
    return spec, update, event_id, result


def _delivered(link: MessageLink, conversation: Conversation, already: bool) -> pb.RecordDeliveryResponse:
    return pb.RecordDeliveryResponse(
        link=convert.link_pb(link),
        conversation=convert.conversation_pb(conversation),
        already_processed=already,
    )
