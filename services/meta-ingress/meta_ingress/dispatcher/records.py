"""What the mapper knows for the dispatcher.

Lookups: channel bindings, conversations (by external chat id or by channel + customer), the wamid of a
Bitrix24 message. Bookkeeping: dedupe records (CheckProcessed / MarkProcessed) and message links (for a
reply sent as one message both at once: RecordDelivery). A send
whose recording fails is not kept here: it is noted on the Kafka record (send_once.py), so the retry of
the event, on whichever replica, only records it instead of sending again.

Dedupe records this process has seen in the mapper (its own MarkProcessed, or a CheckProcessed that found
one) are remembered for a while: every operator message reaches the topic twice (online, and again from
the offline-event queue a few seconds later), and the copy then costs no RPC. Only "processed" is
remembered, never "not processed": a record is never taken back, so the memory cannot send twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential
from zaptrix.clients import Clients
from zaptrix.kafka import TransientError
from zaptrix.logging import get_logger
from zaptrix.rpc import RpcNotFound, RpcPermanent, call
from zaptrix.ttlcache import NotFoundError, TtlCache
from zaptrix.v1 import mapper_pb2

from meta_ingress.dispatcher.notices import Notice

log = get_logger(__name__)
DONE_KEPT = 20_000  # dedupe records remembered (the offline copy of a message comes seconds after it)
DONE_TTL_S = 3600.0


class Records:
    def __init__(self, clients: Clients) -> None:
        self.clients = clients
        self._done: TtlCache[str, str] = TtlCache(DONE_KEPT, DONE_TTL_S)

    # --- lookups ---------------------------------------------------------------------------------------
    async def channel(self, phone_number_id: str) -> mapper_pb2.Channel:
        """The channel binding (the loader of the dispatcher's channel cache); NotFoundError if unbound."""
        try:
            return await call(
                "mapper GetChannel",
                self.clients.mapper.GetChannel(
                    mapper_pb2.GetChannelRequest(phone_number_id=phone_number_id),
                    timeout=self.clients.timeout,
                ),
            )
        except RpcNotFound:
            raise NotFoundError(f"channel {phone_number_id} is not bound") from None

    async def conversation(self, member_id: str, external_chat_id: str) -> mapper_pb2.Conversation:
        """The portal's own conversation with this chat id. RpcNotFound for an unknown chat and for another
        portal's chat alike: there is no lookup by chat id alone."""
        if not member_id or not external_chat_id:
            raise RpcNotFound("mapper FindConversation", "the event names no portal or no external_chat_id")
        chat = mapper_pb2.PortalExternalChat(member_id=member_id, external_chat_id=external_chat_id)
        return await self._find_conversation(mapper_pb2.FindConversationRequest(portal_external_chat=chat))

    async def conversation_of(self, phone_number_id: str, wa_id: str) -> mapper_pb2.Conversation:
        customer = mapper_pb2.ChannelCustomer(phone_number_id=phone_number_id, wa_id=wa_id)
        return await self._find_conversation(mapper_pb2.FindConversationRequest(channel_customer=customer))

    async def _find_conversation(
        self, request: mapper_pb2.FindConversationRequest
    ) -> mapper_pb2.Conversation:
        return await call(
            "mapper FindConversation",
            self.clients.mapper.FindConversation(request, timeout=self.clients.timeout),
        )

    async def marketing_stopped(self, phone_number_id: str, wa_id: str) -> bool:
        """The customer's latest user_preferences answer for marketing messages is "stop"."""
        request = mapper_pb2.GetCustomerConsentRequest(
            phone_number_id=phone_number_id, wa_id=wa_id, category="marketing_messages"
        )
        consent = await call(
            "mapper GetCustomerConsent",
            self.clients.mapper.GetCustomerConsent(request, timeout=self.clients.timeout),
        )
        return str(consent.value) == "stop"

    async def portal_uninstalled(self, member_id: str, at: Any) -> None:
        """The app was uninstalled from the portal at `at` (a Timestamp): the mapper's retention job
        removes the portal's data after the grace period (idempotent, so a redelivery changes nothing)."""
        request = mapper_pb2.SetPortalInstalledRequest(member_id=member_id, installed=False, at=at)
        await call(
            "mapper SetPortalInstalled",
            self.clients.mapper.SetPortalInstalled(request, timeout=self.clients.timeout),
        )

    async def templates(
        self, member_id: str, phone_number_id: str, name: str
    ) -> list[mapper_pb2.MessageTemplate]:
        """The channel's templates of this name (every status and language), as the portal may see them."""
        request = mapper_pb2.ListTemplatesRequest(
            member_id=member_id, phone_number_id=phone_number_id, name=name
        )
        answer = await call(
            "mapper ListTemplates", self.clients.mapper.ListTemplates(request, timeout=self.clients.timeout)
        )
        return list(answer.templates)

    async def apply_template_update(
        self, update: mapper_pb2.TemplateUpdate
    ) -> mapper_pb2.ApplyTemplateUpdateResponse:
        answer: mapper_pb2.ApplyTemplateUpdateResponse = await call(
            "mapper ApplyTemplateUpdate",
            self.clients.mapper.ApplyTemplateUpdate(update, timeout=self.clients.timeout),
        )
        return answer

    async def wamid_of(self, member_id: str, bitrix_message_id: str) -> str:
        """The wamid a Bitrix24 message was sent as ("" when not linked)."""
        request = mapper_pb2.FindMessageLinkRequest(
            bitrix_message=mapper_pb2.PortalMessage(member_id=member_id, bitrix_message_id=bitrix_message_id)
        )
        try:
            link = await call(
                "mapper FindMessageLink",
                self.clients.mapper.FindMessageLink(request, timeout=self.clients.timeout),
            )
        except RpcNotFound:
            return ""
        return str(link.wamid)

    async def latest_customer_wamid(self, conversation_id: str) -> str:
        """The wamid of the conversation's latest customer message ("" when none is recorded)."""
        request = mapper_pb2.FindMessageLinkRequest(latest_customer_message_of=conversation_id)
        try:
            link = await call(
                "mapper FindMessageLink",
                self.clients.mapper.FindMessageLink(request, timeout=self.clients.timeout),
            )
        except RpcNotFound:
            return ""
        return str(link.wamid)

    # --- dedupe ----------------------------------------------------------------------------------------
    def known(self, event_id: str) -> str | None:
        """The dedupe record of an event as this process saw it in the mapper lately (no RPC), else None."""
        return self._done.get(event_id)

    async def recorded(self, event_id: str) -> str | None:
        """The mapper's dedupe record of an event (MarkProcessed happened), else None."""
        done = self._done.get(event_id)
        if done is not None:
            return done
        resp = await call(
            "mapper CheckProcessed",
            self.clients.mapper.CheckProcessed(
                mapper_pb2.CheckProcessedRequest(event_id=event_id), timeout=self.clients.timeout
            ),
        )
        if not resp.processed:
            return None
        self._done.put(event_id, resp.result)
        return str(resp.result)

    async def mark(self, event_id: str, result: str) -> None:
        request = mapper_pb2.MarkProcessedRequest(event_id=event_id, result=result[:1000])
        resp = await self._after_send(
            "mapper MarkProcessed",
            lambda: self.clients.mapper.MarkProcessed(request, timeout=self.clients.timeout),
        )
        # An earlier record keeps its own result: remember ours only when it is the one the mapper kept.
        if not getattr(resp, "already_processed", True):
            self._done.put(event_id, request.result)

    @staticmethod
    def _link_of(conversation_id: str, notice: Notice, wamid: str, first: bool) -> mapper_pb2.MessageLink:
        return mapper_pb2.MessageLink(
            conversation_id=conversation_id,
            direction=mapper_pb2.DIRECTION_OUTBOUND,
            wamid=wamid,
            member_id=notice.member_id,
            # Only the first message carries the Bitrix24 id (one link per Bitrix24 message); the others
            # are linked to the conversation so that a customer quoting them can still be resolved.
            bitrix_message_id=notice.bitrix_message_id if first else "",
            bitrix_chat_id=notice.bitrix_chat_id,
            whatsapp_status="accepted",
        )

    async def link_and_mark(
        self, conversation_id: str, notice: Notice, wamid: str, event_id: str, result: str
    ) -> None:
        """link() + mark() of a message sent as one WhatsApp message, in one RPC (RecordDelivery: one
        transaction, the conversation only named). Where the mapper refuses it (e.g. the Bitrix24 message
        is linked to another wamid, or a mapper that does not grant the call yet), the two calls instead:
        the dedupe record is written whatever the link's fate, as before."""
        request = mapper_pb2.RecordDeliveryRequest(
            link=mapper_pb2.LinkMessageRequest(link=self._link_of(conversation_id, notice, wamid, True)),
            conversation=mapper_pb2.UpdateConversationRequest(id=conversation_id),
            processed=mapper_pb2.MarkProcessedRequest(event_id=event_id, result=result[:1000]),
        )
        try:
            resp = await self._after_send(
                "mapper RecordDelivery",
                partial(self.clients.mapper.RecordDelivery, request, timeout=self.clients.timeout),
            )
        except (RpcPermanent, RpcNotFound) as exc:
            log.info("link and dedupe record not recorded at once: one by one", error=str(exc))
            await self.link(conversation_id, notice, [wamid])
            await self.mark(event_id, result)
            return
        if not resp.already_processed:
            self._done.put(event_id, request.processed.result)

    async def link(self, conversation_id: str, notice: Notice, wamids: list[str]) -> None:
        for i, wamid in enumerate(wamids):
            request = mapper_pb2.LinkMessageRequest(
                link=self._link_of(conversation_id, notice, wamid, i == 0)
            )
            try:
                await self._after_send(
                    "mapper LinkMessage",
                    partial(self.clients.mapper.LinkMessage, request, timeout=self.clients.timeout),
                )
            except RpcPermanent as exc:  # RpcConflict included
                level = log.warning if i == 0 else log.debug
                level("message link not recorded", wamid=wamid, error=str(exc))

    async def _after_send(self, what: str, rpc: Callable[[], Awaitable[Any]]) -> Any:
        """Recording after a send: a few quick attempts in process (a failure here must not cost a second
        send; the effect noted on the record covers the retry of the event if all of them fail)."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(TransientError),
            stop=stop_after_attempt(4),
            wait=wait_exponential(multiplier=0.1, exp_base=3),  # 0.1, 0.3, 0.9 s
            reraise=True,
        ):
            with attempt:
                return await call(what, rpc())
        raise AssertionError("unreachable")  # pragma: no cover - reraise=True always raises or returns
