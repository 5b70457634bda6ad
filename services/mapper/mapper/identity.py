"""Identity aliases: one conversation per person and channel, found by any of the person's identifiers.

A customer is known by a phone (wa_id, when Meta shares it), a BSUID (business-scoped user id; a new one
when the customer changes number), a parent BSUID and a username. Every identifier a conversation has
seen is a row of ``mapper.conversation_alias``. Resolving an identity, in one transaction:

1. lock the identifiers (advisory locks, sorted: two resolutions of overlapping identities serialize);
2. find the conversations any phone/BSUID/parent-BSUID names (a username only moves, it never merges:
   a released username may be someone else's later);
3. none: create one keyed by the phone when known, else the BSUID (the key never changes afterwards);
   several: merge them into the oldest (links and aliases move, the others are deleted), so a person who
   wrote first without and then with a phone is still one conversation;
4. record every identifier as an alias of it and update the current identity.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from asyncpg import Record
from zaptrix.database import Database

from mapper.errors import AlreadyExists, FailedPrecondition
from mapper.model import Conversation
from mapper.repository import _INSERT_CONVERSATION, _SELECT_CONVERSATION, CONVERSATION_COLUMNS, _conversation

KINDS = ("phone", "bsuid", "parent_bsuid", "username")
MATCHING = ("phone", "bsuid", "parent_bsuid")


@dataclass(frozen=True, slots=True)
class Identity:
    phone: str | None = None
    user_id: str | None = None
    parent_user_id: str | None = None
    username: str | None = None

    def aliases(self) -> list[tuple[str, str]]:
        values = (self.phone, self.user_id, self.parent_user_id, self.username)
        return [(k, v) for k, v in zip(KINDS, values, strict=True) if v]

    @property
    def key(self) -> str | None:
        """The conversation key of a new conversation: the phone when known, else the BSUID."""
        return self.phone or self.user_id


@dataclass(frozen=True, slots=True)
class Resolved:
    conversation: Conversation
    created: bool
    merged: list[uuid.UUID]


# The conversations any of the identifiers ($2 kinds, $3 values) names: by alias (primary-key look-ups,
# one per identifier), or by key for a row written by an insert path that records no aliases.
# With each row, the aliases it has (a person has a handful), so a caller can tell if anything is new.
# A UNION of two index look-ups, not an OR (which PostgreSQL answers with a scan of every conversation).
_FIND = f"""
WITH found AS (
    SELECT a.conversation_id AS id FROM unnest($2::text[], $3::text[]) AS u(k, v)
    JOIN mapper.conversation_alias a ON a.phone_number_id = $1 AND a.kind = u.k AND a.value = u.v
    UNION
    SELECT c.id FROM mapper.conversation_mapping c
    WHERE c.phone_number_id = $1 AND c.meta_whatsapp_id = ANY($3::text[])
      AND NOT EXISTS (SELECT 1 FROM mapper.conversation_alias a WHERE a.conversation_id = c.id)
)
SELECT {CONVERSATION_COLUMNS}, ARRAY(
    SELECT a.kind || ':' || a.value FROM mapper.conversation_alias a WHERE a.conversation_id = m.id
) AS aliases
FROM mapper.conversation_mapping m WHERE m.id IN (SELECT id FROM found)
ORDER BY m.created_at, m.id"""  # noqa: S608

_UPSERT_ALIASES = """
INSERT INTO mapper.conversation_alias (phone_number_id, kind, value, conversation_id)
SELECT $1, k, v, $4 FROM unnest($2::text[], $3::text[]) AS u(k, v)
ON CONFLICT (phone_number_id, kind, value) DO UPDATE SET conversation_id = EXCLUDED.conversation_id"""

_SET_IDENTITY = f"""
UPDATE mapper.conversation_mapping SET
    customer_phone = COALESCE($2, customer_phone),
    customer_user_id = COALESCE($3, customer_user_id),
    customer_parent_user_id = COALESCE($4, customer_parent_user_id),
    customer_username = COALESCE($5, customer_username),
    contact_name = COALESCE(contact_name, NULLIF($6, '')),
    last_message_at = GREATEST(last_message_at, $7::timestamptz),
    last_customer_message_at = GREATEST(last_customer_message_at, $8::timestamptz),
    updated_at = now()
WHERE id = $1
RETURNING {CONVERSATION_COLUMNS}"""  # noqa: S608


def _columns(row: Record) -> dict[str, Any]:
    """A _FIND row without its aliases column: the conversation."""
    return {k: v for k, v in row.items() if k != "aliases"}


def _nothing_new(row: Record, identity: Identity, contact_name: str | None) -> bool:
    """True when resolving would write nothing: every identifier is already an alias of the row (or its
    key, for a row without aliases), the current address and username are the row's, and a name to
    record only fills an empty one (which this row does not have)."""
    known = set(row["aliases"]) or {f"{_kind_of_key(row['wa_id'])}:{row['wa_id']}"}
    if any(f"{k}:{v}" not in known for k, v in identity.aliases()):
        return False
    current = (
        (identity.phone, row["customer_phone"]),
        (identity.user_id, row["customer_user_id"]),
        (identity.parent_user_id, row["customer_parent_user_id"]),
        (identity.username, row["customer_username"]),
    )
    if any(new is not None and new != have for new, have in current):
        return False
    return not contact_name or bool(row["contact_name"])


def _kind_of_key(key: str) -> str:
    return "phone" if key.isdigit() else "bsuid"


async def resolve_identity(
    db: Database,
    phone_number_id: str,
    identity: Identity,
    *,
    previous: Identity | None = None,
    contact_name: str | None = None,
    external_chat_id: str | None = None,
    replaces_phone: bool = False,
) -> Resolved | None:
    """The person's conversation, created when ``external_chat_id`` is given and none matches (else None).

    ``previous``: identifiers the person had (an identity-change message); they find, they are not set.
    ``replaces_phone``: the customer changed number, so the old phone alias is dropped (numbers get
    reassigned: the next owner of the old number must not land in this conversation).
    """
    matching = [
        (k, v) for k, v in identity.aliases() + (previous.aliases() if previous else []) if k in MATCHING
    ]
    keys = sorted({f"{k}:{v}" for k, v in matching})
    find = (_FIND, phone_number_id, [k for k, _ in matching], [v for _, v in matching])
    locks = [f"{phone_number_id}|{key}" for key in keys]
    if previous is None and not replaces_phone:
        # The common case, a known customer writing again: read only and no write. The shared locks wait
        # for a resolution of these identifiers in flight (a merge), so the read after them sees its result.
        async with db.connection() as conn:
            await conn.execute(
                "SELECT pg_advisory_xact_lock_shared(hashtextextended(k, 7)) FROM unnest($1::text[]) AS k",
                locks,
            )
            rows = await conn.fetch(*find)
        if len(rows) == 1 and _nothing_new(rows[0], identity, contact_name):
            return Resolved(_conversation(_columns(rows[0])), False, [])
    async with db.connection() as conn, conn.transaction():
        for lock in locks:  # sorted: no deadlock between two resolutions
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))", lock)
        rows = [_columns(r) for r in await conn.fetch(*find)]
        created = False
        if not rows:
            if external_chat_id is None or identity.key is None:
                return None
            row = await conn.fetchrow(
                _INSERT_CONVERSATION, phone_number_id, identity.key, external_chat_id, contact_name
            )
            if row is None and identity.user_id and identity.key != identity.user_id:
                # The phone is still the key of the person who had the number before (they changed
                # number): this person's conversation is keyed by their BSUID instead.
                row = await conn.fetchrow(
                    _INSERT_CONVERSATION, phone_number_id, identity.user_id, external_chat_id, contact_name
                )
            if row is None:
                channel = await conn.fetchrow(
                    "SELECT active FROM mapper.channel_binding WHERE phone_number_id = $1", phone_number_id
                )
                if channel is None or not channel["active"]:
                    raise FailedPrecondition(f"channel {phone_number_id} is not bound or inactive")
                raise AlreadyExists(f"conversation key or external chat id of {phone_number_id} is taken")
            rows, created = [row], True
        survivor = _conversation(rows[0])
        merged = [_conversation(r) for r in rows[1:]]
        if merged:
            ids = [m.id for m in merged]
            await conn.execute(
                "UPDATE mapper.message_link SET conversation_id = $1 WHERE conversation_id = ANY($2::uuid[])",
                survivor.id,
                ids,
            )
            await conn.execute(
                "UPDATE mapper.conversation_alias SET conversation_id = $1 WHERE conversation_id = ANY($2::uuid[])",
                survivor.id,
                ids,
            )
            await conn.execute(
                _UPSERT_ALIASES,
                phone_number_id,
                [_kind_of_key(m.wa_id) for m in merged],
                [m.wa_id for m in merged],
                survivor.id,
            )
            await conn.execute("DELETE FROM mapper.conversation_mapping WHERE id = ANY($1::uuid[])", ids)
        if (
            replaces_phone
            and identity.phone
            and survivor.customer_phone
            and survivor.customer_phone != identity.phone
        ):
            await conn.execute(
                "DELETE FROM mapper.conversation_alias WHERE phone_number_id = $1 AND kind = 'phone' AND value = $2",
                phone_number_id,
                survivor.customer_phone,
            )
        own = identity.aliases()
        unaliased = not created and not await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM mapper.conversation_alias WHERE conversation_id = $1)", survivor.id
        )
        if unaliased and not replaces_phone:  # written by a path that records no aliases: its key is one
            own.append((_kind_of_key(survivor.wa_id), survivor.wa_id))
        own = list(dict.fromkeys(own))  # one row each: ON CONFLICT may not touch a row twice
        await conn.execute(
            _UPSERT_ALIASES, phone_number_id, [k for k, _ in own], [v for _, v in own], survivor.id
        )
        row = await conn.fetchrow(
            _SET_IDENTITY,
            survivor.id,
            identity.phone,
            identity.user_id,
            identity.parent_user_id,
            identity.username,
            contact_name,
            max((m.last_message_at for m in merged if m.last_message_at), default=None),
            max((m.last_customer_message_at for m in merged if m.last_customer_message_at), default=None),
        )
    return Resolved(_conversation(row), created, [m.id for m in merged])


async def conversation_by_alias(
    db: Database, phone_number_id: str, kind: str, value: str
) -> Conversation | None:
    async with db.connection() as conn:
        row = await conn.fetchrow(
            f"{_SELECT_CONVERSATION} WHERE id = (SELECT conversation_id FROM mapper.conversation_alias"  # noqa: S608
            " WHERE phone_number_id = $1 AND kind = $2 AND value = $3)",
            phone_number_id,
            kind,
            value,
        )
    return None if row is None else _conversation(row)
