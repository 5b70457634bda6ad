"""The fake mapper: the mapper's documented behaviour in memory (NOT_FOUND for unknown things, idempotent
LinkMessage/MarkProcessed/RecordDelivery, atomic get-or-create, portal-scoped lookups)."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from zaptrix.v1 import mapper_pb2, mapper_pb2_grpc

from zaptrix_testing.fakes.calls import Recorder, abort, found


def timestamp(dt: datetime | None = None) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(dt or datetime.now(UTC))
    return out


class FakeMapper(Recorder, mapper_pb2_grpc.MapperServicer):
    def __init__(self) -> None:
        super().__init__()
        self.channels: dict[str, mapper_pb2.Channel] = {}
        self.conversations: dict[str, mapper_pb2.Conversation] = {}  # by id
        self.links: dict[str, mapper_pb2.MessageLink] = {}  # by wamid
        self.processed: dict[str, str] = {}  # event id -> result
        self.consents: dict[tuple[str, str, str], mapper_pb2.CustomerConsent] = {}
        self.uninstalled: dict[str, datetime] = {}  # member_id -> since (SetPortalInstalled)
        self.templates: dict[tuple[str, str], mapper_pb2.MessageTemplate] = {}  # (pnid, template id)
        self._lock = asyncio.Lock()

    def clear(self) -> None:
        """Forget all state, calls and scripted failures."""
        self.channels.clear()
        self.conversations.clear()
        self.links.clear()
        self.processed.clear()
        self.consents.clear()
        self.uninstalled.clear()
        self.templates.clear()
        self.forget_calls()

    # --- test set-up -------------------------------------------------------------------------------

    def bind(self, phone_number_id: str, member_id: str, line_id: int, **kw: Any) -> mapper_pb2.Channel:
        channel = mapper_pb2.Channel(
            phone_number_id=phone_number_id,
            display_phone_number=kw.pop("display_phone_number", "15550000001"),
            member_id=member_id,
            line_id=line_id,
            connector_id=kw.pop("connector_id", "zaptrix_whatsapp"),
            active=kw.pop("active", True),
            **kw,
        )
        self.channels[phone_number_id] = channel
        return channel

    def add_conversation(
        self,
        phone_number_id: str,
        wa_id: str,
        name: str = "",
        *,
        last_customer_ago_s: float | None = None,
        bitrix_chat_id: str = "",
    ) -> mapper_pb2.Conversation:
        channel = self.channels[phone_number_id]
        conv = mapper_pb2.Conversation(
            id=str(uuid.uuid4()),
            phone_number_id=phone_number_id,
            wa_id=wa_id,
            member_id=channel.member_id,
            external_chat_id=f"wa_{uuid.uuid4().hex}",  # opaque, as the mapper makes them
            contact_name=name,
            bitrix_chat_id=bitrix_chat_id,
        )
        conv.created_at.CopyFrom(timestamp())
        if last_customer_ago_s is not None:
            conv.last_customer_message_at.seconds = int(time.time() - last_customer_ago_s)
        self.conversations[conv.id] = conv
        return conv

    def by_customer(self, phone_number_id: str, wa_id: str) -> mapper_pb2.Conversation | None:
        for conv in self.conversations.values():
            if conv.phone_number_id == phone_number_id and conv.wa_id == wa_id:
                return conv
        return None

    # --- channels ----------------------------------------------------------------------------------

    async def BindChannel(self, request: Any, context: Any) -> mapper_pb2.Channel:
        await self._enter("BindChannel", request, context, request.channel.phone_number_id)
        channel = mapper_pb2.Channel()
        channel.CopyFrom(request.channel)
        self.channels[channel.phone_number_id] = channel
        return channel

    async def GetChannel(self, request: Any, context: Any) -> mapper_pb2.Channel:
        await self._enter("GetChannel", request, context)
        return await found(context, self.channels.get(request.phone_number_id), "channel")

    async def ListChannels(self, request: Any, context: Any) -> mapper_pb2.ListChannelsResponse:
        await self._enter("ListChannels", request, context)
        return mapper_pb2.ListChannelsResponse(
            channels=[
                c for c in self.channels.values() if not request.member_id or c.member_id == request.member_id
            ]
        )

    async def GetChannelActivity(self, request: Any, context: Any) -> mapper_pb2.GetChannelActivityResponse:
        await self._enter("GetChannelActivity", request, context, request.member_id)
        if not request.member_id:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "member_id is required")
        window_start = time.time() - 24 * 3600
        out = mapper_pb2.GetChannelActivityResponse()
        for pid in sorted(self.channels):
            if self.channels[pid].member_id != request.member_id or (
                request.phone_number_ids and pid not in request.phone_number_ids
            ):
                continue
            convs = [c for c in self.conversations.values() if c.phone_number_id == pid]
            inbound = [c.last_customer_message_at for c in convs if c.HasField("last_customer_message_at")]
            ids = {c.id for c in convs}
            sent = [
                link.created_at
                for link in self.links.values()
                if link.conversation_id in ids and link.direction == mapper_pb2.DIRECTION_OUTBOUND
            ]
            activity = out.channels.add(
                phone_number_id=pid,
                conversations=len(convs),
                open_windows=sum(1 for t in inbound if t.ToSeconds() > window_start),
            )
            if inbound:
                activity.last_inbound_at.CopyFrom(max(inbound, key=lambda t: t.ToNanoseconds()))
            if sent:
                activity.last_outbound_at.CopyFrom(max(sent, key=lambda t: t.ToNanoseconds()))
        return out

    async def UnbindChannel(self, request: Any, context: Any) -> mapper_pb2.Channel:
        await self._enter("UnbindChannel", request, context, request.phone_number_id)
        if not request.phone_number_id or not request.member_id:
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "phone_number_id and member_id are required"
            )
        channel = self.channels.get(request.phone_number_id)
        if channel is None or channel.member_id != request.member_id:
            await abort(context, grpc.StatusCode.NOT_FOUND, "channel not bound to this portal")
        if any(c.phone_number_id == request.phone_number_id for c in self.conversations.values()):
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, "the number has conversations")
        del self.channels[request.phone_number_id]
        for key in [k for k in self.consents if k[0] == request.phone_number_id]:
            del self.consents[key]
        return channel

    # --- conversations -----------------------------------------------------------------------------

    async def GetOrCreateConversation(
        self, request: Any, context: Any
    ) -> mapper_pb2.GetOrCreateConversationResponse:
        await self._enter("GetOrCreateConversation", request, context)
        async with self._lock:
            channel = self.channels.get(request.phone_number_id)
            if channel is None or not channel.active:  # as the mapper: a precondition, not a lookup
                await abort(context, grpc.StatusCode.FAILED_PRECONDITION, "channel not bound or inactive")
            key = request.wa_id or request.user_id  # the mapper's key: the phone when known, else the BSUID
            conv = self.by_customer(request.phone_number_id, key)
            if conv is not None:
                return mapper_pb2.GetOrCreateConversationResponse(conversation=conv, created=False)
            conv = self.add_conversation(request.phone_number_id, key, request.contact_name)
            return mapper_pb2.GetOrCreateConversationResponse(conversation=conv, created=True)

    async def ApplyIdentityChange(self, request: Any, context: Any) -> mapper_pb2.IdentityChangeResponse:
        """Simplified: the conversation keyed by a previous identifier (the real mapper keeps all aliases)."""
        await self._enter("ApplyIdentityChange", request, context)
        for previous in (request.previous_wa_id, request.previous_user_id):
            conv = self.by_customer(request.phone_number_id, previous) if previous else None
            if conv is not None:
                return mapper_pb2.IdentityChangeResponse(conversation=conv)
        await abort(context, grpc.StatusCode.NOT_FOUND, "no conversation has the previous identifiers")
        raise AssertionError("unreachable")

    async def FindConversationByIdentityAlias(self, request: Any, context: Any) -> mapper_pb2.Conversation:
        await self._enter("FindConversationByIdentityAlias", request, context)
        conv = self.by_customer(request.phone_number_id, request.value)
        if conv is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, "conversation not found")
        assert conv is not None
        return conv

    async def FindConversation(self, request: Any, context: Any) -> mapper_pb2.Conversation:
        await self._enter("FindConversation", request, context)
        by = request.WhichOneof("by")
        match = None
        for conv in self.conversations.values():
            if (
                (by == "id" and conv.id == request.id)
                or (  # scoped like the mapper: another portal's chat is NOT_FOUND
                    by == "portal_external_chat"
                    and conv.external_chat_id == request.portal_external_chat.external_chat_id
                    and conv.member_id == request.portal_external_chat.member_id
                )
                or (  # an Open Lines chat of the portal (the template picker)
                    by == "bitrix_chat"
                    and conv.bitrix_chat_id == request.bitrix_chat.bitrix_chat_id
                    and conv.member_id == request.bitrix_chat.member_id
                )
                or (
                    by == "channel_customer"
                    and conv.phone_number_id == request.channel_customer.phone_number_id
                    and conv.wa_id == request.channel_customer.wa_id
                )
            ):
                match = conv
        return await found(context, match, "conversation")

    async def UpdateConversation(self, request: Any, context: Any) -> mapper_pb2.Conversation:
        await self._enter("UpdateConversation", request, context)
        conv = await found(context, self.conversations.get(request.id), "conversation")
        return self._update(conv, request)

    @staticmethod
    def _update(conv: mapper_pb2.Conversation, request: Any) -> mapper_pb2.Conversation:
        for name in ("bitrix_contact_id", "bitrix_chat_id", "contact_name"):
            if request.HasField(name):
                setattr(conv, name, getattr(request, name))
        for name in ("last_message_at", "last_customer_message_at"):
            # Timestamps only move forward (a late, older event does not roll them back).
            if (
                request.HasField(name)
                and getattr(request, name).ToDatetime() > getattr(conv, name).ToDatetime()
            ):
                getattr(conv, name).CopyFrom(getattr(request, name))
        return conv

    # --- message links -----------------------------------------------------------------------------

    async def LinkMessage(self, request: Any, context: Any) -> mapper_pb2.MessageLink:
        await self._enter("LinkMessage", request, context, request.link.wamid)
        if request.link.conversation_id not in self.conversations:
            await abort(context, grpc.StatusCode.NOT_FOUND, "no such conversation")
        if self._conflicts(request.link):
            await abort(context, grpc.StatusCode.ALREADY_EXISTS, "bitrix message linked to another wamid")
        return self._link(request)

    def _conflicts(self, link: mapper_pb2.MessageLink) -> bool:
        return any(
            link.bitrix_message_id
            and other.member_id == link.member_id
            and other.bitrix_message_id == link.bitrix_message_id
            and other.wamid != link.wamid
            for other in self.links.values()
        )

    def _link(self, request: Any) -> mapper_pb2.MessageLink:
        """The first link of a wamid stays (a repeat returns it)."""
        link = self.links.get(request.link.wamid)
        if link is None:
            link = mapper_pb2.MessageLink()
            link.CopyFrom(request.link)
            link.created_at.CopyFrom(timestamp())
            self.links[link.wamid] = link
        return link

    async def FindMessageLink(self, request: Any, context: Any) -> mapper_pb2.MessageLink:
        await self._enter("FindMessageLink", request, context)
        by = request.WhichOneof("by")
        if by == "wamid":
            link = self.links.get(request.wamid)
        elif by == "latest_customer_message_of":
            inbound = [
                lk
                for lk in self.links.values()
                if lk.conversation_id == request.latest_customer_message_of
                and lk.direction == mapper_pb2.DIRECTION_INBOUND
            ]  # dict order = the order recorded
            link = inbound[-1] if inbound else None
        else:
            link = next(
                (
                    lk
                    for lk in self.links.values()
                    if lk.member_id == request.bitrix_message.member_id
                    and lk.bitrix_message_id == request.bitrix_message.bitrix_message_id
                ),
                None,
            )
        return await found(context, link, "link")

    async def RecordCustomerConsent(self, request: Any, context: Any) -> mapper_pb2.CustomerConsent:
        """As the mapper: the newest changed_at wins; the stored one is answered."""
        await self._enter("RecordCustomerConsent", request, context, request.wa_id)
        key = (request.phone_number_id, request.wa_id, request.category)
        old = self.consents.get(key)
        if old is None or old.changed_at.seconds <= request.changed_at.seconds:
            self.consents[key] = mapper_pb2.CustomerConsent()
            self.consents[key].CopyFrom(request)
        return self.consents[key]

    async def GetCustomerConsent(self, request: Any, context: Any) -> mapper_pb2.CustomerConsent:
        await self._enter("GetCustomerConsent", request, context, request.wa_id)
        key = (request.phone_number_id, request.wa_id, request.category)
        return self.consents.get(key) or mapper_pb2.CustomerConsent(
            phone_number_id=request.phone_number_id, wa_id=request.wa_id, category=request.category
        )

    # template catalogue (issue 16)

    async def ReplaceTemplates(self, request: Any, context: Any) -> mapper_pb2.ReplaceTemplatesResponse:
        await self._enter("ReplaceTemplates", request, context, request.phone_number_id)
        pnid = request.phone_number_id
        await found(context, self.channels.get(pnid), f"phone_number_id {pnid}")
        old = {k for k in self.templates if k[0] == pnid}
        new = {(pnid, t.template_id) for t in request.templates}
        for key in old - new:
            del self.templates[key]
        for t in request.templates:
            row = mapper_pb2.MessageTemplate()
            row.CopyFrom(t)
            row.phone_number_id, row.waba_id = pnid, request.waba_id
            row.parameter_format = row.parameter_format or "POSITIONAL"
            row.updated_at.CopyFrom(request.synced_at if request.HasField("synced_at") else timestamp())
            self.templates[(pnid, t.template_id)] = row
        return mapper_pb2.ReplaceTemplatesResponse(stored=len(new), removed=len(old - new))

    async def ApplyTemplateUpdate(self, request: Any, context: Any) -> mapper_pb2.ApplyTemplateUpdateResponse:
        """As the mapper: every channel's row of the template, when not newer than the update."""
        await self._enter("ApplyTemplateUpdate", request, context, request.template_id)
        updated = 0
        for row in self.templates.values():
            if row.waba_id != request.waba_id or row.template_id != request.template_id:
                continue
            if row.updated_at.seconds > request.at.seconds:
                continue
            row.status = request.status or row.status
            row.quality = request.quality or row.quality
            row.category = request.category or row.category
            row.updated_at.CopyFrom(request.at)
            updated += 1
        channels = sorted(
            {r.phone_number_id for r in self.templates.values() if r.waba_id == request.waba_id}
        )
        return mapper_pb2.ApplyTemplateUpdateResponse(updated=updated, phone_number_ids=channels)

    async def ListTemplates(self, request: Any, context: Any) -> mapper_pb2.ListTemplatesResponse:
        await self._enter("ListTemplates", request, context, request.phone_number_id)
        channel = self.channels.get(request.phone_number_id)
        if channel is None or channel.member_id != request.member_id:
            await abort(context, grpc.StatusCode.NOT_FOUND, "not a channel of this portal")
        rows = [
            t
            for (pnid, _), t in sorted(self.templates.items(), key=lambda kv: (kv[1].name, kv[1].language))
            if pnid == request.phone_number_id
            and (not request.approved_only or t.status == "APPROVED")
            and (not request.name or t.name == request.name)
        ]
        return mapper_pb2.ListTemplatesResponse(templates=rows)

    async def UpdateMessageStatus(self, request: Any, context: Any) -> mapper_pb2.MessageLink:
        await self._enter("UpdateMessageStatus", request, context, request.wamid)
        link = await found(context, self.links.get(request.wamid), "link")
        if request.HasField("whatsapp_status"):
            link.whatsapp_status = request.whatsapp_status
        if request.HasField("bitrix_status"):
            link.bitrix_status = request.bitrix_status
        return link

    async def UpdateMessageStatuses(
        self, request: Any, context: Any
    ) -> mapper_pb2.UpdateMessageStatusesResponse:
        """As the mapper: each status only moves forward; the links after the whole list, found ones only."""
        await self._enter("UpdateMessageStatuses", request, context)
        wa_order = ("accepted", "sent", "delivered", "read", "failed")
        b24_order = ("delivered", "read", "failed")

        def later(order: tuple[str, ...], old: str, new: str) -> str:
            rank = {s: i for i, s in enumerate(order)}
            return old if rank.get(old, -1) > rank.get(new, -1) else new

        for u in request.updates:
            if u.HasField("processed"):
                self._mark(u.processed)
            link = self.links.get(u.wamid)
            if link is None:
                continue
            if u.HasField("whatsapp_status"):
                link.whatsapp_status = later(wa_order, link.whatsapp_status, u.whatsapp_status)
            if u.HasField("bitrix_status"):
                link.bitrix_status = later(b24_order, link.bitrix_status, u.bitrix_status)
        return mapper_pb2.UpdateMessageStatusesResponse(
            links=[self.links[u.wamid] for u in request.updates if u.wamid in self.links]
        )

    # --- data lifecycle ------------------------------------------------------------------------------

    async def SetPortalInstalled(self, request: Any, context: Any) -> mapper_pb2.SetPortalInstalledResponse:
        """As the mapper: the earliest uninstall is kept; an install at or after it clears it. The grace
        period is the mapper's default (30 days)."""
        await self._enter("SetPortalInstalled", request, context, request.member_id)
        if not request.member_id:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "member_id is required")
        at = request.at.ToDatetime(tzinfo=UTC) if request.HasField("at") else datetime.now(UTC)
        since = self.uninstalled.get(request.member_id)
        if not request.installed:
            self.uninstalled[request.member_id] = at if since is None else min(since, at)
        elif since is not None and since <= at:
            del self.uninstalled[request.member_id]
        out = mapper_pb2.SetPortalInstalledResponse()
        if (since := self.uninstalled.get(request.member_id)) is not None:
            out.uninstalled_at.FromDatetime(since)
            out.purge_after.FromDatetime(since + timedelta(days=30))
        return out

    # --- dedupe ------------------------------------------------------------------------------------

    async def CheckProcessed(self, request: Any, context: Any) -> mapper_pb2.CheckProcessedResponse:
        await self._enter("CheckProcessed", request, context, request.event_id)
        result = self.processed.get(request.event_id)
        return mapper_pb2.CheckProcessedResponse(processed=result is not None, result=result or "")

    async def MarkProcessed(self, request: Any, context: Any) -> mapper_pb2.MarkProcessedResponse:
        await self._enter("MarkProcessed", request, context, request.event_id)
        return mapper_pb2.MarkProcessedResponse(already_processed=self._mark(request))

    def _mark(self, request: Any) -> bool:
        """The first result of an event stays."""
        already = request.event_id in self.processed
        self.processed.setdefault(request.event_id, request.result)
        return already

    async def CheckProcessedMany(self, request: Any, context: Any) -> mapper_pb2.CheckProcessedManyResponse:
        await self._enter("CheckProcessedMany", request, context)
        return mapper_pb2.CheckProcessedManyResponse(
            results=[
                mapper_pb2.CheckProcessedResponse(
                    processed=e in self.processed, result=self.processed.get(e, "")
                )
                for e in request.event_ids
            ]
        )

    async def FindMessageLinks(self, request: Any, context: Any) -> mapper_pb2.FindMessageLinksResponse:
        await self._enter("FindMessageLinks", request, context)
        return mapper_pb2.FindMessageLinksResponse(
            links=[self.links[w] for w in request.wamids if w in self.links]
        )

    async def RecordDeliveries(self, request: Any, context: Any) -> mapper_pb2.RecordDeliveriesResponse:
        """RecordDelivery per item, each answering with its own error; a failure scripted for
        RecordDelivery is that item's answer (scripted failures of RecordDeliveries fail the whole call)."""
        await self._enter("RecordDeliveries", request, context)
        results = []
        for item in request.deliveries:
            self.calls.append(f"RecordDeliveries.item:{item.processed.event_id}")
            conv = self.conversations.get(item.conversation.id)
            scripted = self.fail["RecordDelivery"].pop(0) if self.fail["RecordDelivery"] else None
            if scripted is None and (conv is None or item.link.link.conversation_id != conv.id):
                scripted = grpc.StatusCode.NOT_FOUND
            if scripted is not None or conv is None:
                code = scripted or grpc.StatusCode.NOT_FOUND
                results.append(
                    mapper_pb2.RecordDeliveryResult(
                        error_code=code.value[0], error_details=f"injected {code.name}"
                    )
                )
                continue
            link = self._link(item.link)
            already = self._mark(item.processed)
            done = mapper_pb2.RecordDeliveryResponse(
                link=link, conversation=self._update(conv, item.conversation), already_processed=already
            )
            results.append(mapper_pb2.RecordDeliveryResult(response=done))
        return mapper_pb2.RecordDeliveriesResponse(results=results)

    async def RecordDelivery(self, request: Any, context: Any) -> mapper_pb2.RecordDeliveryResponse:
        """LinkMessage + UpdateConversation + MarkProcessed, all or nothing (checked before any change)."""
        await self._enter("RecordDelivery", request, context, request.processed.event_id)
        conv = self.conversations.get(request.conversation.id)
        if conv is None or request.link.link.conversation_id != conv.id:
            await abort(context, grpc.StatusCode.NOT_FOUND, "no such conversation")
        link = self._link(request.link)
        already = self._mark(request.processed)
        return mapper_pb2.RecordDeliveryResponse(
            link=link, conversation=self._update(conv, request.conversation), already_processed=already
        )
