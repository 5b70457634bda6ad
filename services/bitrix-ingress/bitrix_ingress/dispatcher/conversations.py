"""Known conversations, kept in memory so that a customer's next message needs no GetOrCreateConversation.

Keyed by (portal, phone_number_id, wa_id): the portal is the channel's, so an entry is only ever found for
the portal the message goes to, and an entry is only used when the conversation itself names that portal,
channel and customer (a conversation of another tenant is never handed out, whatever the cache holds).

What an entry says changes only through this dispatcher (RecordDelivery, the CRM contact's
UpdateConversation): each of those answers with the conversation as the mapper now has it, and that answer
replaces the entry. An entry also goes when a message of its conversation could not be delivered (Bitrix24
refused it, or it was held), and after ``ttl_s`` at the latest (another replica that owned the conversation's
partition before a rebalance may have written it; what could be stale then is a contact or chat id the
next recording brings back, never the portal).
"""

from __future__ import annotations

from zaptrix.errors import TransientError
from zaptrix.ttlcache import TtlCache
from zaptrix.v1 import events_pb2, mapper_pb2

from bitrix_ingress.deps import Deps

Key = tuple[str, str, str]  # (member_id, phone_number_id, wa_id)


def key_of(conv: mapper_pb2.Conversation) -> Key:
    return (conv.member_id, conv.phone_number_id, conv.wa_id)


class Conversations:
    def __init__(self, deps: Deps, max_entries: int, ttl_s: float) -> None:
        self.deps = deps
        self._cache: TtlCache[Key, mapper_pb2.Conversation] = TtlCache(max(1, max_entries), ttl_s)
        self.enabled = max_entries > 0

    def __len__(self) -> int:
        return len(self._cache)

    async def get(
        self,
        channel: mapper_pb2.Channel,
        wa_id: str,
        contact_name: str,
        cm: events_pb2.CustomerMessage | None = None,
    ) -> mapper_pb2.Conversation:
        """The conversation of this channel's customer (GetOrCreateConversation unless known). ``cm``: the
        message's identity (BSUID, username) for the mapper's identity aliases; the conversation found may
        be keyed by another of the person's identifiers than ``wa_id``."""
        key: Key = (channel.member_id, channel.phone_number_id, wa_id)
        cached = self._cache.get(key) if self.enabled else None
        if cached is not None and _same_portal(cached, key):
            return cached
        pnid = channel.phone_number_id
        got = await (
            self.deps.get_or_create_conversation(pnid, wa_id, contact_name)
            if cm is None
            else self.deps.get_or_create_conversation(pnid, wa_id, contact_name, cm=cm)
        )
        conv = got.conversation
        if not _same_portal(conv, key):
            # The channel binding this process holds names another portal than the conversation (the number
            # was moved): never deliver into the wrong portal; the channel is read again on the retry.
            raise TransientError(
                f"conversation {conv.id} belongs to portal {conv.member_id}, not to the channel's portal "
                f"{channel.member_id}"
            )
        self.remember(conv)
        if self.enabled and key_of(conv) != key:  # found by another identifier of the person
            self._cache.put(key, conv)
        return conv

    def known(self, member_id: str, phone_number_id: str, wa_id: str) -> mapper_pb2.Conversation | None:
        """The cached conversation of this portal's channel and customer, if any (no mapper call)."""
        key: Key = (member_id, phone_number_id, wa_id)
        cached = self._cache.get(key) if self.enabled and member_id else None
        return cached if cached is not None and _same_portal(cached, key) else None

    def remember(self, conv: mapper_pb2.Conversation) -> None:
        """The mapper's latest answer for a conversation (after a recording or an update)."""
        if self.enabled and conv.id and conv.member_id and conv.phone_number_id and conv.wa_id:
            copy = mapper_pb2.Conversation()
            copy.CopyFrom(conv)
            self._cache.put(key_of(copy), copy)

    def forget(self, conv: mapper_pb2.Conversation) -> None:
        self._cache.invalidate(key_of(conv))


def _same_portal(conv: mapper_pb2.Conversation, key: Key) -> bool:
    return (conv.member_id, conv.phone_number_id) == key[:2]
