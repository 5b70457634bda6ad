"""The mapper's operations: repository calls plus the in-process caches (see docs/mapper.md).

What is cached, and why it is safe with several replicas:
- Active channel bindings (read on every message, written by an operator now and then). BindChannel
  in this process invalidates its entry; another replica's BindChannel becomes visible here within
  channel_cache_ttl_s. Inactive or missing bindings are never cached, so activating a channel is seen
  at once everywhere; only a deactivation or an edit of line/connector can lag by the TTL.
- Event ids known to be processed: once true, "processed" never becomes false again (expiry removes
  records only after dedupe_retention_hours, and the cache TTL is shorter), so a hit is always right.
  "Not processed" is never cached.
Conversations and message links are not cached: every RPC returning them carries fields another
replica may have just written (the Bitrix24 contact/chat ids, the 24 h window's timestamp, statuses),
and each is already one indexed statement.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import TypeVar

from zaptrix.ttlcache import TtlCache

from mapper.errors import FailedPrecondition, InvalidArgument, NotFound
from mapper.identity import Identity, Resolved, conversation_by_alias, resolve_identity
from mapper.ledger import Priced
from mapper.metrics import CACHE_ENTRIES, CACHE_LOOKUPS, CONVERSATIONS_CREATED, IDENTITY_MERGES
from mapper.model import (
    ChannelActivity,
    ChannelBinding,
    ChannelSpec,
    Consent,
    Conversation,
    ConversationUpdate,
    LinkSpec,
    MessageLink,
    new_external_chat_id,
)
from mapper.repository import Repository
from mapper.retention import set_portal_installed
from mapper.settings import MapperSettings, RetentionSettings
from mapper.templates import Catalogue

V = TypeVar("V")


def _cache(name: str, max_entries: int, ttl_s: float) -> TtlCache[str, V]:
    cache: TtlCache[str, V] = TtlCache(max_entries, ttl_s, counter=CACHE_LOOKUPS, labels=(name,))
    CACHE_ENTRIES.labels(name).set_function(lambda: len(cache))
    return cache


class MapperService:
    def __init__(
        self, repo: Repository, settings: MapperSettings, retention: RetentionSettings | None = None
    ) -> None:
        self.repo = repo
        self.uninstall_grace = timedelta(days=(retention or RetentionSettings()).uninstall_grace_days)
        self.channels: TtlCache[str, ChannelBinding] = _cache(
            "channel", settings.channel_cache_size, settings.channel_cache_ttl_s
        )
        self.processed: TtlCache[str, str] = _cache(
            "processed_event", settings.dedupe_cache_size, settings.dedupe_cache_ttl_s
        )

    # channel bindings

    async def bind_channel(self, spec: ChannelSpec) -> ChannelBinding:
        # Invalidate before (a reader already in flight must not store what it read) and after (a
        # reader that started in between may have read the old row). The next read fetches the new one.
        self.channels.invalidate(spec.phone_number_id)
        try:
            binding, _ = await self.repo.bind_channel(spec)
        finally:
            self.channels.invalidate(spec.phone_number_id)
        return binding

    async def get_channel(self, phone_number_id: str) -> ChannelBinding:
        cached = self.channels.get(phone_number_id)
        if cached is not None:
            return cached
        generation = self.channels.generation()
        binding = await self.repo.get_channel(phone_number_id)
        if binding is None:
            raise NotFound(f"channel {phone_number_id} is not bound")
        if binding.active:
            self.channels.put(phone_number_id, binding, generation=generation)
        return binding

    async def list_channels(self, member_id: str | None) -> list[ChannelBinding]:
        return await self.repo.list_channels(member_id)

    async def unbind_channel(self, phone_number_id: str, member_id: str) -> ChannelBinding:
        self.channels.invalidate(phone_number_id)  # before and after, as bind_channel
        try:
            removed = await self.repo.unbind_channel(phone_number_id, member_id)
        finally:
            self.channels.invalidate(phone_number_id)
        if removed is None:
            raise NotFound(f"channel {phone_number_id} is not bound to this portal")
        return removed

    async def channel_activity(self, member_id: str, phone_number_ids: list[str]) -> list[ChannelActivity]:
        return await self.repo.channel_activity(member_id, phone_number_ids)

    # conversations

    async def get_or_create_conversation(
        self,
        phone_number_id: str,
        wa_id: str | None,
        contact_name: str | None,
        identity: Identity | None = None,
    ) -> tuple[Conversation, bool]:
        resolved = await self.resolve_customer(
            phone_number_id, identity or Identity(phone=wa_id), contact_name
        )
        return resolved.conversation, resolved.created

    async def resolve_customer(
        self, phone_number_id: str, identity: Identity, contact_name: str | None
    ) -> Resolved:
        """The person's conversation by any identifier (identity aliases), created on first contact."""
        try:
            channel = await self.get_channel(phone_number_id)
        except NotFound as exc:
            raise FailedPrecondition(f"phone_number_id {phone_number_id} is not bound to a portal") from exc
        if not channel.active:
            raise FailedPrecondition(f"channel {phone_number_id} is inactive")
        if identity.key is None:
            raise InvalidArgument("wa_id or user_id is required")
        resolved = await resolve_identity(
            self.repo.db,
            phone_number_id,
            identity,
            contact_name=contact_name,
            external_chat_id=new_external_chat_id(),
        )
        assert resolved is not None  # an external chat id was given: created when nothing matched
        if resolved.created:
            CONVERSATIONS_CREATED.inc()
        if resolved.merged:
            IDENTITY_MERGES.inc(len(resolved.merged))
        return resolved

    async def apply_identity_change(
        self, phone_number_id: str, previous: Identity, new: Identity
    ) -> Resolved:
        resolved = await resolve_identity(
            self.repo.db, phone_number_id, new, previous=previous, replaces_phone=new.phone is not None
        )
        if resolved is None:
            raise NotFound("no conversation of this channel has the previous identifiers")
        if resolved.merged:
            IDENTITY_MERGES.inc(len(resolved.merged))
        return resolved

    async def conversation_by_identity_alias(
        self, phone_number_id: str, kind: str, value: str
    ) -> Conversation:
        return self._found(
            await conversation_by_alias(self.repo.db, phone_number_id, kind, value), "conversation"
        )

    @staticmethod
    def _found(conversation: Conversation | None, what: str) -> Conversation:
        if conversation is None:
            raise NotFound(f"no conversation for {what}")
        return conversation

    async def conversation_by_id(self, conversation_id: uuid.UUID) -> Conversation:
        return self._found(await self.repo.conversation_by_id(conversation_id), f"id {conversation_id}")

    async def conversation_by_customer(self, phone_number_id: str, wa_id: str) -> Conversation:
        found = await self.repo.conversation_by_customer(phone_number_id, wa_id)
        return self._found(found, f"channel {phone_number_id} and this wa_id")

    async def conversation_by_portal_external_chat(self, member_id: str, external_chat: str) -> Conversation:
        """The portal's conversation with this chat id. A chat of another portal is NOT_FOUND, with the
        same answer as an unknown one: the caller learns nothing about other tenants."""
        found = await self.repo.conversation_by_portal_external_chat(member_id, external_chat)
        return self._found(found, f"external chat id {external_chat} of portal {member_id}")

    async def conversation_by_bitrix_chat(self, member_id: str, bitrix_chat_id: str) -> Conversation:
        found = await self.repo.conversation_by_bitrix_chat(member_id, bitrix_chat_id)
        return self._found(found, f"bitrix chat {bitrix_chat_id} of portal {member_id}")

    async def update_conversation(self, update: ConversationUpdate) -> Conversation:
        return await self.repo.update_conversation(update)

    # message links

    async def link_message(self, spec: LinkSpec) -> MessageLink:
        link, _ = await self.repo.link_message(spec)
        return link

    async def link_by_wamid(self, wamid: str) -> MessageLink:
        link = await self.repo.link_by_wamid(wamid)
        if link is None:
            raise NotFound(f"no message link for wamid {wamid}")
        return link

    async def links_by_wamids(self, wamids: list[str]) -> list[MessageLink]:
        """link_by_wamid for each, in order, leaving out the wamids without a link."""
        found = await self.repo.links_by_wamids(list(dict.fromkeys(wamids)))
        return [found[w] for w in wamids if w in found]

    async def link_by_bitrix_message(self, member_id: str, bitrix_message_id: str) -> MessageLink:
        link = await self.repo.link_by_bitrix_message(member_id, bitrix_message_id)
        if link is None:
            raise NotFound(f"no message link for bitrix message {bitrix_message_id} of portal {member_id}")
        return link

    async def latest_customer_link(self, conversation_id: uuid.UUID) -> MessageLink:
        link = await self.repo.latest_inbound_link(conversation_id)
        if link is None:
            raise NotFound(f"no customer message recorded in conversation {conversation_id}")
        return link

    async def update_message_status(
        self, wamid: str, whatsapp_status: str | None, bitrix_status: str | None
    ) -> MessageLink:
        return await self.repo.update_message_status(wamid, whatsapp_status, bitrix_status)

    async def update_message_statuses(
        self,
        updates: list[tuple[str, str | None, str | None]],
        marks: list[tuple[str, str]] | None = None,
        priced: list[Priced] | None = None,
    ) -> list[MessageLink]:
        """update_message_status for each, in one statement: the links as they are after the whole list,
        in order, leaving out the wamids without a link. ``marks``: (event_id, result) to MarkProcessed in
        the same transaction; ``priced``: counted in the cost ledger (once per wamid), in it too."""
        found = await self.repo.update_message_statuses(updates, marks or [], priced or [])
        for event_id, result in marks or []:
            if self.processed.get(event_id) is None:
                self.processed.put(event_id, result)
        return [found[w] for w, _, _ in updates if w in found]

    # customer consent

    async def record_consent(self, consent: Consent) -> Consent:
        return await self.repo.record_consent(consent)

    async def get_consent(self, phone_number_id: str, wa_id: str, category: str) -> Consent | None:
        return await self.repo.get_consent(phone_number_id, wa_id, category)

    # template catalogue (issue 16): no cache, a paused template must leave the picker at once
    @property
    def templates(self) -> Catalogue:
        return Catalogue(self.repo.db)

    # dedupe

    async def check_processed(self, event_id: str) -> str | None:
        """The recorded result when the event was processed, else None."""
        cached = self.processed.get(event_id)
        if cached is not None:
            return cached
        result = await self.repo.check_processed(event_id)
        if result is not None:
            self.processed.put(event_id, result)
        return result

    async def mark_processed(self, event_id: str, result: str) -> bool:
        """Returns True when the event already was processed (its first result is kept)."""
        if self.processed.get(event_id) is not None:
            return True
        already = await self.repo.mark_processed(event_id, result)
        if not already:
            self.processed.put(event_id, result)
        return already

    async def check_processed_many(self, event_ids: list[str]) -> list[str | None]:
        """check_processed for each id, in order: cached ones from memory, the rest in one query."""
        known = {e: r for e in event_ids if (r := self.processed.get(e)) is not None}
        todo = list({e for e in event_ids if e not in known})
        if todo:
            found = await self.repo.check_processed_many(todo)
            for event_id, result in found.items():
                self.processed.put(event_id, result)
            known.update(found)
        return [known.get(e) for e in event_ids]

    # one delivered inbound message

    async def record_delivery(
        self, spec: LinkSpec, update: ConversationUpdate, event_id: str, result: str
    ) -> tuple[MessageLink, Conversation, bool]:
        """link_message + update_conversation + mark_processed, in one transaction.

        The processed record is always written in the transaction (a cached "processed" only means the
        insert finds the row); the cache learns the event once the transaction has committed.
        """
        link, conversation, already = await self.repo.record_delivery(spec, update, event_id, result)
        if not already:
            self.processed.put(event_id, result)
        return link, conversation, already

    async def record_deliveries(
        self, items: list[tuple[LinkSpec, ConversationUpdate, str, str]]
    ) -> list[tuple[MessageLink, Conversation, bool]]:
        """record_delivery for each item in one transaction (raises as the first failing item would)."""
        done = await self.repo.record_deliveries(items)
        for (_, _, event_id, result), (_, _, already) in zip(items, done, strict=True):
            if not already:
                self.processed.put(event_id, result)
        return done

    # data lifecycle

    async def set_portal_installed(
        self, member_id: str, installed: bool, at: datetime
    ) -> tuple[datetime | None, datetime | None]:
        """Records an uninstall or a new install; returns since when the portal is uninstalled and when
        the retention job will remove its data (both None: installed)."""
        since = await set_portal_installed(self.repo.db, member_id, installed, at)
        return since, None if since is None else since + self.uninstall_grace
