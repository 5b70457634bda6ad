"""What every dispatcher handler shares, and the Target of an event: its conversation, channel and
credentials."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NoReturn

from zaptrix.clients import Clients
from zaptrix.kafka import PermanentError
from zaptrix.logging import get_logger
from zaptrix.metrics import count_cross_tenant
from zaptrix.rpc import RpcNotFound
from zaptrix.ttlcache import AsyncTtlCache, NotFoundError, TtlCache
from zaptrix.v1 import mapper_pb2

from meta_ingress.credentials import Credentials, CredentialsCache, UnknownChannel
from meta_ingress.dispatcher.notices import Notifier
from meta_ingress.dispatcher.records import Records
from meta_ingress.dispatcher.send_once import SendOnce
from meta_ingress.dispatcher.sender import Sender
from meta_ingress.graph.client import GraphClient
from meta_ingress.settings import DispatcherSettings

SERVICE = "meta-dispatcher"
log = get_logger(__name__)
WINDOW_S = 24 * 3600  # Meta's customer service window
# A conversation looked up moments ago serves the next events of the same chat (a burst of replies to one
# customer): its ids and portal do not change, and it is used only while its window is open by that
# record, so staleness can only let Meta judge a window that closed in the last seconds (131047 path).
CONVERSATIONS_KEPT = 10_000
CONVERSATION_TTL_S = 2.0


def window_open_by_record(conversation: mapper_pb2.Conversation, now: float) -> bool:
    """Not known to be closed: no customer message on record, or the last one less than 24 h ago."""
    if not conversation.HasField("last_customer_message_at"):
        return True
    return now - conversation.last_customer_message_at.seconds < WINDOW_S


@dataclass
class Target:
    conversation: mapper_pb2.Conversation
    channel: mapper_pb2.Channel
    creds: Credentials

    @property
    def phone_number_id(self) -> str:
        return self.conversation.phone_number_id

    @property
    def wa_id(self) -> str:
        return self.conversation.wa_id

    @property
    def address(self) -> str:
        """Whom the Graph API sends to: the phone when known, else the current BSUID (which goes in
        "recipient", see send_plan.base_payload); a mapper without identity aliases: the key."""
        c = self.conversation
        return c.customer_phone or c.customer_user_id or c.wa_id

    @property
    def key(self) -> str:
        return f"{self.phone_number_id}:{self.wa_id}"


class Context:
    def __init__(
        self, settings: DispatcherSettings, clients: Clients, graph: GraphClient, notifier: Notifier
    ) -> None:
        self.settings = settings
        self.graph = graph
        self.notifier = notifier
        self.records = Records(clients)
        self.sender = Sender(settings, graph)
        self.once = SendOnce(settings, self.records, self.sender)
        self.credentials = CredentialsCache(clients, settings)
        self.channels: AsyncTtlCache[str, mapper_pb2.Channel] = AsyncTtlCache(
            self.records.channel,
            ttl_s=settings.channel_cache_ttl_s,
            negative_ttl_s=min(5.0, settings.channel_cache_ttl_s),
            stale_max_s=600.0,
            name="channels",
        )
        self._conversations: TtlCache[tuple[str, str], mapper_pb2.Conversation] = TtlCache(
            CONVERSATIONS_KEPT, CONVERSATION_TTL_S
        )

    async def conversation(self, member_id: str, external_chat_id: str, kind: str) -> mapper_pb2.Conversation:
        """The event's conversation, which must belong to the event's portal, or PermanentError
        ("cross-tenant: ...", counted, no notice: the event's portal is not the chat's)."""
        key = (member_id, external_chat_id)
        cached = self._conversations.get(key)
        if cached is not None and window_open_by_record(cached, time.time()):
            return cached
        try:
            conversation = await self.records.conversation(member_id, external_chat_id)
        except RpcNotFound:
            conversation = None
        if conversation is None or conversation.member_id != member_id:
            self.refuse(kind, member_id, external_chat_id, "is not a conversation of the event's portal")
        self._conversations.put(key, conversation)
        return conversation

    async def target(self, member_id: str, external_chat_id: str, kind: str) -> Target:
        """The conversation, channel and credentials, or PermanentError.

        The conversation, the event and the channel binding must all name one portal before any credential
        is loaded; otherwise nothing is sent and no notice goes anywhere (see ``refuse``).
        """
        conversation = await self.conversation(member_id, external_chat_id, kind)
        try:
            channel = await self.channels.get(conversation.phone_number_id)
        except NotFoundError as exc:  # the dead-letter hook tells the operator (dead_letters.py)
            raise PermanentError(f"channel not configured: {exc}") from None
        if channel.member_id != conversation.member_id:
            self.refuse(kind, member_id, external_chat_id, "is on a channel bound to another portal")
        try:
            creds = await self.credentials.get(conversation.phone_number_id)
        except (NotFoundError, UnknownChannel) as exc:
            raise PermanentError(f"channel not configured: {exc}") from None
        return Target(conversation, channel, creds)

    @staticmethod
    def refuse(kind: str, member_id: str, external_chat_id: str, why: str) -> NoReturn:
        """An event that names a chat its portal does not own: counted, logged (no message text) and
        dead-lettered with a reason starting "cross-tenant". An unknown chat gets the same answer: the
        mapper does not tell them apart, so nothing here reveals whether another portal's chat exists."""
        count_cross_tenant(SERVICE, kind)
        log.warning(
            "operator event refused (cross-tenant): its chat " + why,
            kind=kind,
            member_id=member_id,
            external_chat_id=external_chat_id,
        )
        raise PermanentError(f"cross-tenant: chat {external_chat_id!r} {why} ({member_id!r})")
