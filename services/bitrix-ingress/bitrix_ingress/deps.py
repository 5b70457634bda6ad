"""Typed calls to the mapper and token-keeper (gRPC); failures are raised as zaptrix.rpc maps them
(RpcNotFound, RpcConflict, RpcTransient, RpcPermanent)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from zaptrix.clients import Clients
from zaptrix.rpc import call
from zaptrix.v1 import events_pb2, mapper_pb2, token_keeper_pb2

MAPPER_MAX_BATCH = 1000  # items per CheckProcessedMany / FindMessageLinks / UpdateMessageStatuses (mapper)

T = TypeVar("T")


def conversation_update(
    conversation_id: str,
    *,
    bitrix_contact_id: str | None = None,
    bitrix_chat_id: str | None = None,
    contact_name: str | None = None,
    last_message_at: datetime | None = None,
    last_customer_message_at: datetime | None = None,
) -> mapper_pb2.UpdateConversationRequest:
    """An UpdateConversationRequest that sets only the given fields (None: unchanged)."""
    req = mapper_pb2.UpdateConversationRequest(id=conversation_id)
    if bitrix_contact_id is not None:
        req.bitrix_contact_id = bitrix_contact_id
    if bitrix_chat_id is not None:
        req.bitrix_chat_id = bitrix_chat_id
    if contact_name is not None:
        req.contact_name = contact_name
    if last_message_at is not None:
        req.last_message_at.FromDatetime(last_message_at)
    if last_customer_message_at is not None:
        req.last_customer_message_at.FromDatetime(last_customer_message_at)
    return req


class Deps:
    """The gRPC dependencies of both processes."""

    def __init__(self, clients: Clients) -> None:
        self.clients = clients
        self.mapper: Any = clients.mapper
        self.tk: Any = clients.token_keeper

    async def _unary(self, fn: Callable[..., Awaitable[T]], request: Any, what: str) -> T:
        return await call(what, fn(request, timeout=self.clients.timeout))

    # --- token-keeper ---------------------------------------------------------------------

    async def verify_application_token(
        self, member_id: str, application_token: str
    ) -> token_keeper_pb2.VerifyApplicationTokenResponse:
        req = token_keeper_pb2.VerifyApplicationTokenRequest(
            member_id=member_id, application_token=application_token
        )
        return await self._unary(self.tk.VerifyApplicationToken, req, "token-keeper VerifyApplicationToken")

    async def get_access_token(self, member_id: str) -> token_keeper_pb2.AccessToken:
        req = token_keeper_pb2.GetAccessTokenRequest(member_id=member_id)
        return await self._unary(self.tk.GetAccessToken, req, "token-keeper GetAccessToken")

    async def report_token_rejected(
        self, member_id: str, access_token: str, error: str
    ) -> token_keeper_pb2.AccessToken:
        req = token_keeper_pb2.ReportTokenRejectedRequest(
            member_id=member_id, access_token=access_token, error=error
        )
        return await self._unary(self.tk.ReportTokenRejected, req, "token-keeper ReportTokenRejected")

    async def upsert_portal(self, req: token_keeper_pb2.UpsertPortalRequest) -> token_keeper_pb2.PortalStatus:
        return await self._unary(self.tk.UpsertPortal, req, "token-keeper UpsertPortal")

    async def get_portal_status(self, member_id: str) -> token_keeper_pb2.PortalStatus:
        req = token_keeper_pb2.GetPortalStatusRequest(member_id=member_id)
        return await self._unary(self.tk.GetPortalStatus, req, "token-keeper GetPortalStatus")

    async def list_portals(self) -> token_keeper_pb2.ListPortalsResponse:
        req = token_keeper_pb2.ListPortalsRequest()
        return await self._unary(self.tk.ListPortals, req, "token-keeper ListPortals")

    # --- mapper ---------------------------------------------------------------------------

    async def get_channel(self, phone_number_id: str) -> mapper_pb2.Channel:
        req = mapper_pb2.GetChannelRequest(phone_number_id=phone_number_id)
        return await self._unary(self.mapper.GetChannel, req, "mapper GetChannel")

    async def list_channels(self, member_id: str) -> mapper_pb2.ListChannelsResponse:
        req = mapper_pb2.ListChannelsRequest(member_id=member_id)
        return await self._unary(self.mapper.ListChannels, req, "mapper ListChannels")

    async def get_or_create_conversation(
        self,
        phone_number_id: str,
        wa_id: str,
        contact_name: str,
        cm: events_pb2.CustomerMessage | None = None,
    ) -> mapper_pb2.GetOrCreateConversationResponse:
        req = mapper_pb2.GetOrCreateConversationRequest(
            phone_number_id=phone_number_id, wa_id=wa_id, contact_name=contact_name
        )
        if cm is not None and cm.user_id:  # identity aliases: a BSUID-only customer sends no phone
            req.wa_id = wa_id if cm.phone_known else ""
            req.user_id, req.parent_user_id, req.username = cm.user_id, cm.parent_user_id, cm.username
        return await self._unary(self.mapper.GetOrCreateConversation, req, "mapper GetOrCreateConversation")

    async def apply_identity_change(
        self, change: events_pb2.CustomerIdentityChange
    ) -> mapper_pb2.IdentityChangeResponse:
        req = mapper_pb2.IdentityChangeRequest(
            phone_number_id=change.phone_number_id,
            previous_user_id=change.previous_user_id,
            previous_parent_user_id=change.previous_parent_user_id,
            previous_wa_id=change.previous_wa_id,
            user_id=change.user_id,
            parent_user_id=change.parent_user_id,
            wa_id=change.wa_id,
        )
        return await self._unary(self.mapper.ApplyIdentityChange, req, "mapper ApplyIdentityChange")

    async def find_portal_conversation(
        self, member_id: str, external_chat_id: str
    ) -> mapper_pb2.Conversation:
        """The portal's own conversation with this chat id; RpcNotFound for an unknown chat and for another
        portal's chat alike (the mapper never serves a chat across portals)."""
        req = mapper_pb2.FindConversationRequest(
            portal_external_chat=mapper_pb2.PortalExternalChat(
                member_id=member_id, external_chat_id=external_chat_id
            )
        )
        return await self._unary(self.mapper.FindConversation, req, "mapper FindConversation")

    async def find_chat_conversation(self, member_id: str, bitrix_chat_id: str) -> mapper_pb2.Conversation:
        """The portal's conversation of an Open Lines chat (im chat id); RpcNotFound for another portal's."""
        req = mapper_pb2.FindConversationRequest(
            bitrix_chat=mapper_pb2.PortalChat(member_id=member_id, bitrix_chat_id=bitrix_chat_id)
        )
        return await self._unary(self.mapper.FindConversation, req, "mapper FindConversation")

    async def list_templates(
        self, member_id: str, phone_number_id: str, approved_only: bool = True, name: str = ""
    ) -> list[mapper_pb2.MessageTemplate]:
        """The channel's templates as its portal may see them (template catalogue, issue 16)."""
        req = mapper_pb2.ListTemplatesRequest(
            member_id=member_id, phone_number_id=phone_number_id, approved_only=approved_only, name=name
        )
        answer = await self._unary(self.mapper.ListTemplates, req, "mapper ListTemplates")
        return list(answer.templates)

    async def find_conversation_by_id(self, conversation_id: str) -> mapper_pb2.Conversation:
        req = mapper_pb2.FindConversationRequest(id=conversation_id)
        return await self._unary(self.mapper.FindConversation, req, "mapper FindConversation")

    async def find_conversation_by_customer(
        self, phone_number_id: str, wa_id: str
    ) -> mapper_pb2.Conversation:
        req = mapper_pb2.FindConversationRequest(
            channel_customer=mapper_pb2.ChannelCustomer(phone_number_id=phone_number_id, wa_id=wa_id)
        )
        return await self._unary(self.mapper.FindConversation, req, "mapper FindConversation")

    async def update_conversation(self, req: mapper_pb2.UpdateConversationRequest) -> mapper_pb2.Conversation:
        """Build `req` with conversation_update (only the fields given change)."""
        return await self._unary(self.mapper.UpdateConversation, req, "mapper UpdateConversation")

    async def record_delivery(
        self,
        link: mapper_pb2.MessageLink,
        conversation: mapper_pb2.UpdateConversationRequest,
        event_id: str,
        result: str,
    ) -> mapper_pb2.RecordDeliveryResponse:
        """LinkMessage + UpdateConversation + MarkProcessed in one mapper transaction (all or nothing)."""
        req = mapper_pb2.RecordDeliveryRequest(
            link=mapper_pb2.LinkMessageRequest(link=link),
            conversation=conversation,
            processed=mapper_pb2.MarkProcessedRequest(event_id=event_id, result=result),
        )
        return await self._unary(self.mapper.RecordDelivery, req, "mapper RecordDelivery")

    async def link_message(self, link: mapper_pb2.MessageLink) -> mapper_pb2.MessageLink:
        req = mapper_pb2.LinkMessageRequest(link=link)
        return await self._unary(self.mapper.LinkMessage, req, "mapper LinkMessage")

    async def find_message_link(self, wamid: str) -> mapper_pb2.MessageLink:
        req = mapper_pb2.FindMessageLinkRequest(wamid=wamid)
        return await self._unary(self.mapper.FindMessageLink, req, "mapper FindMessageLink")

    async def find_message_link_by_bitrix(
        self, member_id: str, bitrix_message_id: str
    ) -> mapper_pb2.MessageLink:
        req = mapper_pb2.FindMessageLinkRequest(
            bitrix_message=mapper_pb2.PortalMessage(member_id=member_id, bitrix_message_id=bitrix_message_id)
        )
        return await self._unary(self.mapper.FindMessageLink, req, "mapper FindMessageLink")

    async def update_message_status(
        self, wamid: str, *, whatsapp_status: str | None = None, bitrix_status: str | None = None
    ) -> mapper_pb2.MessageLink:
        req = mapper_pb2.UpdateMessageStatusRequest(wamid=wamid)
        if whatsapp_status is not None:
            req.whatsapp_status = whatsapp_status
        if bitrix_status is not None:
            req.bitrix_status = bitrix_status
        return await self._unary(self.mapper.UpdateMessageStatus, req, "mapper UpdateMessageStatus")

    async def set_portal_installed(self, member_id: str) -> mapper_pb2.SetPortalInstalledResponse:
        """The app is installed (again) on the portal now: a pending removal of its data is cancelled."""
        req = mapper_pb2.SetPortalInstalledRequest(member_id=member_id, installed=True)
        req.at.GetCurrentTime()
        return await self._unary(self.mapper.SetPortalInstalled, req, "mapper SetPortalInstalled")

    async def record_customer_consent(
        self, consent: mapper_pb2.CustomerConsent
    ) -> mapper_pb2.CustomerConsent:
        return await self._unary(self.mapper.RecordCustomerConsent, consent, "mapper RecordCustomerConsent")

    async def check_processed(self, event_id: str) -> mapper_pb2.CheckProcessedResponse:
        req = mapper_pb2.CheckProcessedRequest(event_id=event_id)
        return await self._unary(self.mapper.CheckProcessed, req, "mapper CheckProcessed")

    async def mark_processed(self, event_id: str, result: str) -> mapper_pb2.MarkProcessedResponse:
        req = mapper_pb2.MarkProcessedRequest(event_id=event_id, result=result)
        return await self._unary(self.mapper.MarkProcessed, req, "mapper MarkProcessed")

    async def check_processed_many(self, event_ids: list[str]) -> list[mapper_pb2.CheckProcessedResponse]:
        """CheckProcessed for each id (one poll batch), the answers in the same order; a catch-up batch
        larger than the mapper's MAX_BATCH goes in several calls."""
        answers: list[mapper_pb2.CheckProcessedResponse] = []
        for start in range(0, len(event_ids), MAPPER_MAX_BATCH):
            req = mapper_pb2.CheckProcessedManyRequest(event_ids=event_ids[start : start + MAPPER_MAX_BATCH])
            resp = await self._unary(self.mapper.CheckProcessedMany, req, "mapper CheckProcessedMany")
            answers += resp.results
        return answers

    async def find_message_links(self, wamids: list[str]) -> dict[str, mapper_pb2.MessageLink]:
        """FindMessageLink for each wamid (one poll batch's statuses): the links found, by wamid."""
        links: dict[str, mapper_pb2.MessageLink] = {}
        for start in range(0, len(wamids), MAPPER_MAX_BATCH):
            req = mapper_pb2.FindMessageLinksRequest(wamids=wamids[start : start + MAPPER_MAX_BATCH])
            resp = await self._unary(self.mapper.FindMessageLinks, req, "mapper FindMessageLinks")
            links.update((link.wamid, link) for link in resp.links)
        return links

    async def update_message_statuses(
        self, updates: list[mapper_pb2.UpdateMessageStatusRequest]
    ) -> list[mapper_pb2.MessageLink]:
        """UpdateMessageStatus for each (one poll batch's statuses), in one statement per MAX_BATCH."""
        links: list[mapper_pb2.MessageLink] = []
        for start in range(0, len(updates), MAPPER_MAX_BATCH):
            req = mapper_pb2.UpdateMessageStatusesRequest(updates=updates[start : start + MAPPER_MAX_BATCH])
            resp = await self._unary(self.mapper.UpdateMessageStatuses, req, "mapper UpdateMessageStatuses")
            links += resp.links
        return links

    async def record_deliveries(
        self, deliveries: list[mapper_pb2.RecordDeliveryRequest]
    ) -> list[mapper_pb2.RecordDeliveryResult]:
        """RecordDelivery for each (one mapper transaction when all succeed); per item its response, or
        the status code RecordDelivery would have answered."""
        req = mapper_pb2.RecordDeliveriesRequest(deliveries=deliveries)
        resp = await self._unary(self.mapper.RecordDeliveries, req, "mapper RecordDeliveries")
        return list(resp.results)
