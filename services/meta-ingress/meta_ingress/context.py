"""What every dispatcher handler shares, and the Target of an event: its conversation, channel and
credentials."""

from __future__ import annotations

from dataclasses import dataclass

from zaptrix.clients import Clients
from zaptrix.kafka import PermanentError
from zaptrix.v1 import mapper_pb2

from meta_ingress.cache import AsyncTtlCache, NotFoundError
from meta_ingress.credentials import Credentials, CredentialsCache, UnknownChannel
from meta_ingress.graph import GraphClient
from meta_ingress.notices import Notice, Notifier
from meta_ingress.records import Records
from meta_ingress.rpc import RpcNotFound
from meta_ingress.sender import Sender
from meta_ingress.settings import DispatcherSettings


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
        self.credentials = CredentialsCache(clients, settings)
        self.channels: AsyncTtlCache[str, mapper_pb2.Channel] = AsyncTtlCache(
            self.records.channel,
            ttl_s=settings.channel_cache_ttl_s,
            negative_ttl_s=min(5.0, settings.channel_cache_ttl_s),
            stale_max_s=600.0,
            name="channels",
        )

    async def target(self, external_chat_id: str, notice: Notice) -> Target:
        """The conversation, channel and credentials, or PermanentError (the dead-letter hook tells the
        operator, dead_letters.py)."""
        try:
            conversation = await self.records.conversation(external_chat_id)
        except RpcNotFound:
            reason = f"unknown conversation: no conversation has external_chat_id {external_chat_id!r}"
            raise PermanentError(reason) from None
        notice.conversation_key = f"{conversation.phone_number_id}:{conversation.wa_id}"
        try:
            channel = await self.channels.get(conversation.phone_number_id)
            creds = await self.credentials.get(conversation.phone_number_id)
        except (NotFoundError, UnknownChannel) as exc:
            raise PermanentError(f"channel not configured: {exc}") from None
        return Target(conversation, channel, creds)
