"""The chats an operator event names, as the portal's own conversations: Kafka keys, refusals, quoted messages.

Shared by the web's event handler (web/operator_events.py) and the offline-event reconciler
(dispatcher/offline_events.py), so an operator message gets the same key and the same tenancy check
whichever way it reached us. docs/bitrix-ingress.md, "POST /webhooks/bitrix24/outbound" step 4.
"""

from __future__ import annotations

import asyncio

from zaptrix.logging import get_logger
from zaptrix.metrics import count_cross_tenant
from zaptrix.rpc import RpcFailed, RpcNotFound
from zaptrix.ttlcache import TtlCache

from bitrix_ingress.deps import Deps
from bitrix_ingress.metrics import UNRESOLVED_CHATS
from bitrix_ingress.web import events as ev

log = get_logger(__name__)

ChatKeys = TtlCache[tuple[str, str], str]  # (member_id, external chat id) -> conversation key


def chat_key_cache() -> ChatKeys:
    return TtlCache(100_000, 86_400.0)


async def resolve_keys(
    deps: Deps, chat_keys: ChatKeys, normalized: ev.Normalized, *, key_by_chat_if_unavailable: bool = True
) -> set[str]:
    """Kafka key of every pending envelope: the conversation key, from the portal's own conversation.

    Every chat is looked up as (authenticated member_id, chat id): the mapper answers NOT_FOUND for a chat
    of another portal exactly as for an unknown one. Returns the chats refused that way; the caller drops
    their envelopes. When the mapper cannot be asked, an envelope goes out keyed by its chat id (the meta
    dispatcher then makes the same portal check before anything is sent), or, with
    ``key_by_chat_if_unavailable=False`` (a caller that can come back later), RpcFailed is raised.
    """
    member = normalized.member_id
    chats = sorted({p.external_chat_id for p in normalized.pending if p.external_chat_id and not p.key})
    keys: dict[str, str] = {}
    refused: set[str] = set()

    async def one(chat: str) -> None:
        cached = chat_keys.get((member, chat))  # scoped: one portal's answer never serves another
        if cached:
            keys[chat] = cached
            return
        try:
            conv = await deps.find_portal_conversation(member, chat)
        except RpcNotFound:
            refused.add(chat)
            return
        except RpcFailed as exc:
            if not key_by_chat_if_unavailable:
                raise
            UNRESOLVED_CHATS.labels("mapper_unavailable").inc()
            log.warning(
                "mapper unavailable, keying by external chat id", external_chat_id=chat, error=exc.reason
            )
            return
        if conv.member_id != member:  # the mapper scopes the lookup; this only guards against a regression
            refused.add(chat)
            return
        key = f"{conv.phone_number_id}:{conv.wa_id}"
        keys[chat] = key
        chat_keys.put((member, chat), key, 86_400.0)

    await asyncio.gather(*(one(c) for c in chats))
    for p in normalized.pending:
        p.envelope.conversation_key = p.key or keys.get(p.external_chat_id) or p.external_chat_id
    return refused


_KINDS = {
    "operator_message": "message",
    "operator_message_edit": "edit",
    "operator_message_delete": "delete",
    "operator_read": "read",
}


def drop_refused(event: str, normalized: ev.Normalized, refused: set[str]) -> int:
    """Remove the envelopes of refused chats (and keep reply_lookups pointing at the right ones);
    count and log each. Returns how many were dropped. The message text is never logged."""
    kept: list[ev.Pending] = []
    lookups: dict[int, str] = {}
    dropped = 0
    for index, p in enumerate(normalized.pending):
        if p.external_chat_id in refused and not p.key:
            kind = _KINDS.get(p.envelope.WhichOneof("kind") or "", "other")
            count_cross_tenant("bitrix-ingress", kind)
            dropped += 1
            continue
        if index in normalized.reply_lookups:
            lookups[len(kept)] = normalized.reply_lookups[index]
        kept.append(p)
    normalized.pending, normalized.reply_lookups = kept, lookups
    for chat in sorted(refused):
        log.warning(
            "operator event refused: the chat is not a conversation of this portal (another portal's, "
            "or unknown); nothing is produced for it",
            bitrix_event=event,
            member_id=normalized.member_id,
            external_chat_id=chat,
        )
    return dropped


async def resolve_replies(deps: Deps, normalized: ev.Normalized) -> None:
    """Best effort: the wamid of a quoted customer message, when Bitrix24 told us its internal id."""
    for index, reply_id in normalized.reply_lookups.items():
        env = normalized.pending[index].envelope
        try:
            link = await deps.find_message_link_by_bitrix(normalized.member_id, reply_id)
        except (RpcNotFound, RpcFailed):
            continue
        if link.wamid:
            env.operator_message.reply_to_external_id = link.wamid
