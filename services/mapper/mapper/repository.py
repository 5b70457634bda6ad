"""All SQL of the mapper. Each method is one short unit of work on one pooled connection.

Tables live in the ``mapper`` schema and are always schema-qualified (no reliance on search_path).
Statements run in autocommit unless a method opens a transaction; READ COMMITTED throughout.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from zaptrix.database import Database

from mapper.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from mapper.ledger import Priced, UsageRow, observe, record_usage
from mapper.model import (
    BITRIX_STATUSES,
    WHATSAPP_STATUSES,
    ChannelActivity,
    ChannelBinding,
    ChannelSpec,
    Consent,
    Conversation,
    ConversationUpdate,
    CrmMode,
    Direction,
    LinkSpec,
    MessageLink,
)

Record = Any  # asyncpg.Record: untyped

# Queries interpolate only the constant column lists and WHERE clauses below (ruff S608 is silenced
# for those lines); every value is a bound $n parameter.

CHANNEL_COLUMNS = """phone_number_id, display_phone_number, member_id, line_id, connector_id, crm_mode,
    reengagement_template, template_language, active, created_at, updated_at"""
CONVERSATION_COLUMNS = """id, phone_number_id, meta_whatsapp_id AS wa_id, member_id, external_chat_id,
    bitrix_contact_id, bitrix_chat_id, contact_name, last_message_at, last_customer_message_at,
    created_at, updated_at, customer_phone, customer_user_id, customer_parent_user_id, customer_username,
    bitrix_user_id"""
LINK_COLUMNS = """wamid, conversation_id, direction, member_id, bitrix_message_id, bitrix_chat_id,
    whatsapp_status, bitrix_status, created_at, updated_at"""


# Each column list names exactly the fields of its model (the model's names: meta_whatsapp_id is wa_id);
# only the enum columns need converting.


def _channel(r: Record) -> ChannelBinding:
    return ChannelBinding(**{**dict(r), "crm_mode": CrmMode(r["crm_mode"])})


def _conversation(r: Record) -> Conversation:
    return Conversation(**dict(r))


def _delivery_answers(
    items: list[tuple[LinkSpec, ConversationUpdate, str, str]],
    links: dict[str, MessageLink],
    conversations: dict[uuid.UUID, Conversation],
    new: set[str],
) -> list[tuple[MessageLink, Conversation, bool]]:
    """Per item of record_deliveries: its link, its conversation, and whether it was already processed."""
    out: list[tuple[MessageLink, Conversation, bool]] = []
    for spec, update, event_id, _ in items:
        first = event_id in new
        new.discard(event_id)  # a second item with the same event id finds it processed
        out.append((links[spec.wamid], conversations[update.id], not first))
    return out


def _link_columns(specs: Sequence[LinkSpec]) -> list[list[Any]]:
    """The message_link columns of `specs`, one array each, in the order of _INSERT_LINKS' parameters."""
    return [
        [s.wamid for s in specs],
        [s.conversation_id for s in specs],
        [s.direction.value for s in specs],
        [s.member_id for s in specs],
        [s.bitrix_message_id for s in specs],
        [s.bitrix_chat_id for s in specs],
        [s.whatsapp_status for s in specs],
        [s.bitrix_status for s in specs],
    ]


def _link(r: Record) -> MessageLink:
    return MessageLink(**{**dict(r), "direction": Direction(r["direction"])})


# --- channel bindings ------------------------------------------------------------------------------

_UPSERT_CHANNEL = f"""
INSERT INTO mapper.channel_binding (phone_number_id, display_phone_number, member_id, line_id,
    connector_id, crm_mode, reengagement_template, template_language, active)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (phone_number_id) DO UPDATE SET
    display_phone_number = EXCLUDED.display_phone_number,
    member_id = EXCLUDED.member_id,
    line_id = EXCLUDED.line_id,
    connector_id = EXCLUDED.connector_id,
    crm_mode = EXCLUDED.crm_mode,
    reengagement_template = EXCLUDED.reengagement_template,
    template_language = EXCLUDED.template_language,
    active = EXCLUDED.active,
    updated_at = now()
RETURNING {CHANNEL_COLUMNS}"""  # noqa: S608

# The 24-hour customer service window (whatsapp.md A6) opens with each customer message.
_CHANNEL_ACTIVITY = """
SELECT cb.phone_number_id, conv.last_inbound_at, sent.last_outbound_at,
       coalesce(conv.open_windows, 0) AS open_windows, coalesce(conv.conversations, 0) AS conversations
FROM mapper.channel_binding cb
LEFT JOIN LATERAL (
    SELECT max(c.last_customer_message_at) AS last_inbound_at,
           count(*) FILTER (WHERE c.last_customer_message_at > now() - interval '24 hours') AS open_windows,
           count(*) AS conversations
    FROM mapper.conversation_mapping c WHERE c.phone_number_id = cb.phone_number_id
) conv ON true
LEFT JOIN LATERAL (
    SELECT max(ml.created_at) AS last_outbound_at
    FROM mapper.conversation_mapping c JOIN mapper.message_link ml ON ml.conversation_id = c.id
    WHERE c.phone_number_id = cb.phone_number_id AND ml.direction = 'outbound'
) sent ON true
WHERE cb.member_id = $1 AND (cardinality($2::text[]) = 0 OR cb.phone_number_id = ANY($2::text[]))
ORDER BY cb.phone_number_id"""

# --- conversations ---------------------------------------------------------------------------------

_SELECT_CONVERSATION = f"SELECT {CONVERSATION_COLUMNS} FROM mapper.conversation_mapping"  # noqa: S608

# member_id comes from the binding in the same statement, under FOR KEY SHARE: a concurrent
# BindChannel that moves the number to another portal (allowed only while it has no conversations)
# either waits for this insert and then sees the conversation, or commits first and this statement
# re-reads the binding. With no conflict target, every unique index (channel+customer, external
# chat id, primary key) is an arbiter, so 50 concurrent first messages never raise a unique violation.
_INSERT_CONVERSATION = f"""
INSERT INTO mapper.conversation_mapping (phone_number_id, meta_whatsapp_id, member_id, external_chat_id,
    contact_name)
SELECT cb.phone_number_id, $2, cb.member_id, $3, $4
FROM mapper.channel_binding cb
WHERE cb.phone_number_id = $1 AND cb.active
FOR KEY SHARE
ON CONFLICT DO NOTHING
RETURNING {CONVERSATION_COLUMNS}"""  # noqa: S608

# Present fields only; "" clears a text field; timestamps move forward only (GREATEST ignores NULL).
# A customer message is also a message, so it advances last_message_at too.
_UPDATE_CONVERSATION = f"""
UPDATE mapper.conversation_mapping SET
    bitrix_contact_id = CASE WHEN $2::text IS NULL THEN bitrix_contact_id ELSE NULLIF($2, '') END,
    bitrix_chat_id = CASE WHEN $3::text IS NULL THEN bitrix_chat_id ELSE NULLIF($3, '') END,
    contact_name = CASE WHEN $4::text IS NULL THEN contact_name ELSE NULLIF($4, '') END,
    last_message_at = GREATEST(last_message_at, $5::timestamptz, $6::timestamptz),
    last_customer_message_at = GREATEST(last_customer_message_at, $6::timestamptz),
    updated_at = now()
WHERE id = $1
RETURNING {CONVERSATION_COLUMNS}"""  # noqa: S608

# --- message links ---------------------------------------------------------------------------------

_SELECT_LINK = f"SELECT {LINK_COLUMNS} FROM mapper.message_link"  # noqa: S608

# member_id (and bitrix_chat_id unless given) come from the conversation. Nothing is inserted when the
# conversation is missing or belongs to another portal, or on any unique conflict (wamid, or the
# portal's bitrix message id): the caller then finds out which.
_INSERT_LINK = f"""
INSERT INTO mapper.message_link (wamid, conversation_id, direction, member_id, bitrix_message_id,
    bitrix_chat_id, whatsapp_status, bitrix_status)
SELECT $1, c.id, $3, c.member_id, $5, COALESCE($6, c.bitrix_chat_id), $7, $8
FROM mapper.conversation_mapping c
WHERE c.id = $2 AND ($4::text IS NULL OR c.member_id = $4)
ON CONFLICT DO NOTHING
RETURNING {LINK_COLUMNS}"""  # noqa: S608

_COMPLETE_LINK = f"""
UPDATE mapper.message_link SET
    bitrix_message_id = COALESCE(bitrix_message_id, $2),
    bitrix_chat_id = COALESCE(bitrix_chat_id, $3),
    updated_at = now()
WHERE wamid = $1
RETURNING {LINK_COLUMNS}"""  # noqa: S608

# Statuses only move forward along their vocabulary ($4 / $5); updating under the row lock makes
# concurrent webhooks (read and delivered racing on two replicas) end at the later one.
_UPDATE_STATUS = f"""
UPDATE mapper.message_link SET
    whatsapp_status = CASE
        WHEN $2::text IS NULL THEN whatsapp_status
        WHEN COALESCE(array_position($4::text[], whatsapp_status), 0) > array_position($4::text[], $2)
            THEN whatsapp_status
        ELSE $2 END,
    bitrix_status = CASE
        WHEN $3::text IS NULL THEN bitrix_status
        WHEN COALESCE(array_position($5::text[], bitrix_status), 0) > array_position($5::text[], $3)
            THEN bitrix_status
        ELSE $3 END,
    updated_at = now()
WHERE wamid = $1
RETURNING {LINK_COLUMNS}"""  # noqa: S608

# --- dedupe ----------------------------------------------------------------------------------------

_MARK_PROCESSED = """
INSERT INTO mapper.processed_event (event_id, result) VALUES ($1, $2)
ON CONFLICT (event_id) DO NOTHING RETURNING true"""

_CHECK_PROCESSED_MANY = """
SELECT event_id, result FROM mapper.processed_event WHERE event_id = ANY($1::text[])"""

_LINKS_BY_WAMIDS = f"""
SELECT {LINK_COLUMNS} FROM mapper.message_link WHERE wamid = ANY($1::text[])"""  # noqa: S608

# _UPDATE_STATUS for a list of distinct wamids (the caller merges the updates of one wamid).
_UPDATE_STATUSES = f"""
UPDATE mapper.message_link AS m SET
    whatsapp_status = CASE
        WHEN u.wa IS NULL THEN m.whatsapp_status
        WHEN COALESCE(array_position($4::text[], m.whatsapp_status), 0) > array_position($4::text[], u.wa)
            THEN m.whatsapp_status
        ELSE u.wa END,
    bitrix_status = CASE
        WHEN u.b24 IS NULL THEN m.bitrix_status
        WHEN COALESCE(array_position($5::text[], m.bitrix_status), 0) > array_position($5::text[], u.b24)
            THEN m.bitrix_status
        ELSE u.b24 END,
    updated_at = now()
FROM unnest($1::text[], $2::text[], $3::text[]) AS u(wamid, wa, b24)
WHERE m.wamid = u.wamid
RETURNING {", ".join("m." + c.strip() for c in LINK_COLUMNS.split(","))}"""  # noqa: S608

_MARK_PROCESSED_MANY = """
INSERT INTO mapper.processed_event (event_id, result)
SELECT * FROM unnest($1::text[], $2::text[])
ON CONFLICT (event_id) DO NOTHING RETURNING event_id"""

# _INSERT_LINK for a list. A row is missing from what it returns when the conversation is missing or of
# another portal, or on a unique conflict: the caller then looks at that one as LinkMessage would.
_INSERT_LINKS = f"""
INSERT INTO mapper.message_link (wamid, conversation_id, direction, member_id, bitrix_message_id,
    bitrix_chat_id, whatsapp_status, bitrix_status)
SELECT u.wamid, c.id, u.direction, c.member_id, u.bitrix_message_id, COALESCE(u.bitrix_chat_id,
    c.bitrix_chat_id), u.whatsapp_status, u.bitrix_status
FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[])
    WITH ORDINALITY AS u(wamid, conversation_id, direction, member_id, bitrix_message_id, bitrix_chat_id,
        whatsapp_status, bitrix_status, n)
JOIN mapper.conversation_mapping c ON c.id = u.conversation_id AND (u.member_id IS NULL OR c.member_id = u.member_id)
ORDER BY u.n
ON CONFLICT DO NOTHING
RETURNING {LINK_COLUMNS}"""  # noqa: S608

# _UPDATE_CONVERSATION for several conversations (one row each: the caller merges a conversation's updates).
_UPDATE_CONVERSATIONS = f"""
UPDATE mapper.conversation_mapping AS m SET
    bitrix_contact_id = CASE WHEN u.contact IS NULL THEN m.bitrix_contact_id ELSE NULLIF(u.contact, '') END,
    bitrix_chat_id = CASE WHEN u.chat IS NULL THEN m.bitrix_chat_id ELSE NULLIF(u.chat, '') END,
    contact_name = CASE WHEN u.name IS NULL THEN m.contact_name ELSE NULLIF(u.name, '') END,
    last_message_at = GREATEST(m.last_message_at, u.last_message_at, u.last_customer_message_at),
    last_customer_message_at = GREATEST(m.last_customer_message_at, u.last_customer_message_at),
    updated_at = now()
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[])
    AS u(id, contact, chat, name, last_message_at, last_customer_message_at)
WHERE m.id = u.id
RETURNING {", ".join("m." + c.strip() for c in CONVERSATION_COLUMNS.split(","))}"""  # noqa: S608

# RecordDeliveries in one statement (atomic on its own, one round trip): links, processed records and the
# merged conversation updates. When a link is not inserted (already linked: a retry; conflicting; no such
# conversation of that portal) or a conversation is missing, the final cast fails with "incomplete", the
# whole statement is undone, and the caller takes the step-by-step transaction, which finds out which.
_RECORD_NEW_DELIVERIES = f"""
WITH links AS ({_INSERT_LINKS}),
processed AS (
    INSERT INTO mapper.processed_event (event_id, result)
    SELECT * FROM unnest($9::text[], $10::text[])
    ON CONFLICT (event_id) DO NOTHING RETURNING event_id),
conversations AS ({
    _UPDATE_CONVERSATIONS.replace("$1::", "$11::")
    .replace("$2::", "$12::")
    .replace("$3::", "$13::")
    .replace("$4::", "$14::")
    .replace("$5::", "$15::")
    .replace("$6::", "$16::")
}),
counted AS (SELECT (SELECT count(*) FROM links) AS l, (SELECT count(*) FROM conversations) AS c)
SELECT CASE WHEN counted.l = $17 AND counted.c = $18 THEN 0
        ELSE ('incomplete: ' || counted.l || ' links, ' || counted.c || ' conversations')::int END AS ok,
    (SELECT json_agg(links) FROM links) AS links,
    (SELECT json_agg(processed.event_id) FROM processed) AS processed,
    (SELECT json_agg(conversations) FROM conversations) AS conversations
FROM counted"""  # noqa: S608

_EXPIRE_PROCESSED = """
DELETE FROM mapper.processed_event WHERE event_id IN (
    SELECT event_id FROM mapper.processed_event
    WHERE processed_at < now() - $1::interval
    ORDER BY processed_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED)"""


_CONSENT_COLUMNS = "phone_number_id, wa_id, category, value, detail, changed_at"
# A change older than the recorded one (Meta does not order webhooks) leaves the row as it is.
_UPSERT_CONSENT = f"""
WITH up AS (
    INSERT INTO mapper.customer_consent AS c (phone_number_id, wa_id, category, value, detail, changed_at)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (phone_number_id, wa_id, category) DO UPDATE
        SET value = EXCLUDED.value, detail = EXCLUDED.detail, changed_at = EXCLUDED.changed_at,
            recorded_at = now()
        WHERE c.changed_at <= EXCLUDED.changed_at
    RETURNING {_CONSENT_COLUMNS}
)
SELECT {_CONSENT_COLUMNS} FROM up
UNION ALL
SELECT {_CONSENT_COLUMNS} FROM mapper.customer_consent
WHERE phone_number_id = $1 AND wa_id = $2 AND category = $3 AND NOT EXISTS (SELECT 1 FROM up)
"""  # noqa: S608


def _consent_args(c: Consent) -> tuple[Any, ...]:
    return (c.phone_number_id, c.wa_id, c.category, c.value, c.detail, c.changed_at)


def _consent(r: Record) -> Consent:
    return Consent(**dict(r))


class Repository:
    def __init__(self, db: Database) -> None:
        self.db = db

    # channel bindings

    async def bind_channel(self, spec: ChannelSpec) -> tuple[ChannelBinding, bool]:
        """Create or replace a binding; returns it and whether it was created."""
        async with self.db.connection() as conn, conn.transaction():
            current = await conn.fetchrow(
                "SELECT member_id FROM mapper.channel_binding WHERE phone_number_id = $1 FOR UPDATE",
                spec.phone_number_id,
            )
            if current is not None and current["member_id"] != spec.member_id:
                in_use = await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM mapper.conversation_mapping WHERE phone_number_id = $1)",
                    spec.phone_number_id,
                )
                if in_use:
                    raise AlreadyExists(
                        f"phone_number_id {spec.phone_number_id} is bound to portal {current['member_id']} "
                        "and has conversations there; it cannot move to another portal"
                    )
            row = await conn.fetchrow(
                _UPSERT_CHANNEL,
                spec.phone_number_id,
                spec.display_phone_number,
                spec.member_id,
                spec.line_id,
                spec.connector_id,
                spec.crm_mode.value,
                spec.reengagement_template,
                spec.template_language,
                spec.active,
            )
        return _channel(row), current is None

    async def get_channel(self, phone_number_id: str) -> ChannelBinding | None:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {CHANNEL_COLUMNS} FROM mapper.channel_binding WHERE phone_number_id = $1",  # noqa: S608
                phone_number_id,
            )
        return None if row is None else _channel(row)

    async def list_channels(self, member_id: str | None) -> list[ChannelBinding]:
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {CHANNEL_COLUMNS} FROM mapper.channel_binding"  # noqa: S608
                " WHERE $1::text IS NULL OR member_id = $1 ORDER BY member_id, phone_number_id",
                member_id,
            )
        return [_channel(r) for r in rows]

    async def unbind_channel(self, phone_number_id: str, member_id: str) -> ChannelBinding | None:
        """Delete the portal's binding of a number without conversations; None when it is not the portal's.
        FOR UPDATE: a first message creating a conversation (FOR KEY SHARE on the binding) waits, then finds
        no binding; or commits first, and this sees its conversation."""
        async with self.db.connection() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"SELECT {CHANNEL_COLUMNS} FROM mapper.channel_binding"  # noqa: S608
                " WHERE phone_number_id = $1 AND member_id = $2 FOR UPDATE",
                phone_number_id,
                member_id,
            )
            if row is None:
                return None
            in_use = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM mapper.conversation_mapping WHERE phone_number_id = $1)",
                phone_number_id,
            )
            if in_use:
                raise FailedPrecondition(
                    f"phone_number_id {phone_number_id} has conversations: pause it instead (active=false)"
                )
            await conn.execute(
                "DELETE FROM mapper.customer_consent WHERE phone_number_id = $1", phone_number_id
            )
            await conn.execute(
                "DELETE FROM mapper.channel_binding WHERE phone_number_id = $1", phone_number_id
            )
        return _channel(row)

    async def channel_activity(self, member_id: str, phone_number_ids: list[str]) -> list[ChannelActivity]:
        """Per number of the portal: the conversations' aggregates (the channel+customer index) and the latest
        outbound link (message_link by conversation). A read for an admin's page, not the message path."""
        async with self.db.connection() as conn:
            rows = await conn.fetch(_CHANNEL_ACTIVITY, member_id, phone_number_ids)
        return [ChannelActivity(**dict(r)) for r in rows]

    # conversations

    async def get_or_create_conversation(
        self, phone_number_id: str, wa_id: str, external_chat_id: str, contact_name: str | None
    ) -> tuple[Conversation, bool]:
        """Exactly one caller gets created=True, however many race (see _INSERT_CONVERSATION)."""
        by_key = f"{_SELECT_CONVERSATION} WHERE phone_number_id = $1 AND meta_whatsapp_id = $2"
        async with self.db.connection() as conn:
            row = await conn.fetchrow(by_key, phone_number_id, wa_id)
            if row is not None:
                return _conversation(row), False
            row = await conn.fetchrow(
                _INSERT_CONVERSATION, phone_number_id, wa_id, external_chat_id, contact_name
            )
            if row is not None:
                return _conversation(row), True
            # Lost the race (the winner has committed: its row is visible to this new statement),
            # or the binding is gone / inactive.
            row = await conn.fetchrow(by_key, phone_number_id, wa_id)
            if row is not None:
                return _conversation(row), False
            channel = await conn.fetchrow(
                "SELECT active FROM mapper.channel_binding WHERE phone_number_id = $1", phone_number_id
            )
        if channel is None:
            raise FailedPrecondition(f"phone_number_id {phone_number_id} is not bound to a portal")
        if not channel["active"]:
            raise FailedPrecondition(f"channel {phone_number_id} is inactive")
        raise AlreadyExists(f"external chat id {external_chat_id} is taken by another conversation")

    async def _find_conversation(self, where: str, *args: object) -> Conversation | None:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(f"{_SELECT_CONVERSATION} WHERE {where}", *args)
        return None if row is None else _conversation(row)

    async def conversation_by_id(self, conversation_id: uuid.UUID) -> Conversation | None:
        return await self._find_conversation("id = $1", conversation_id)

    async def conversation_by_customer(self, phone_number_id: str, wa_id: str) -> Conversation | None:
        # The key, else any phone or BSUID the person has had (identity aliases): a status names the
        # customer by the address we sent to, which may not be the conversation's key.
        return await self._find_conversation(
            "phone_number_id = $1 AND (meta_whatsapp_id = $2 OR id = (SELECT conversation_id"
            " FROM mapper.conversation_alias WHERE phone_number_id = $1 AND kind IN ('phone', 'bsuid')"
            " AND value = $2 LIMIT 1)) ORDER BY meta_whatsapp_id = $2 DESC LIMIT 1",
            phone_number_id,
            wa_id,
        )

    async def conversation_by_portal_external_chat(
        self, member_id: str, external_chat_id: str
    ) -> Conversation | None:
        # The portal is part of the lookup, not checked afterwards: another portal's row is never read.
        return await self._find_conversation(
            "external_chat_id = $1 AND member_id = $2", external_chat_id, member_id
        )

    async def conversation_by_bitrix_chat(self, member_id: str, bitrix_chat_id: str) -> Conversation | None:
        # Bitrix24 groups a line's chats by user, so in principle two conversations could share one chat;
        # the most recently active one is the one an operator is answering.
        return await self._find_conversation(
            "member_id = $1 AND bitrix_chat_id = $2"
            " ORDER BY last_message_at DESC NULLS LAST, created_at DESC LIMIT 1",
            member_id,
            bitrix_chat_id,
        )

    async def update_conversation(self, update: ConversationUpdate) -> Conversation:
        async with self.db.connection() as conn:
            return await self._update_conversation(conn, update)

    @staticmethod
    async def _update_conversation(conn: Any, update: ConversationUpdate) -> Conversation:
        if not update.changes_anything:
            row = await conn.fetchrow(f"{_SELECT_CONVERSATION} WHERE id = $1", update.id)
        else:
            row = await conn.fetchrow(
                _UPDATE_CONVERSATION,
                update.id,
                update.bitrix_contact_id,
                update.bitrix_chat_id,
                update.contact_name,
                update.last_message_at,
                update.last_customer_message_at,
            )
        if row is None:
            raise NotFound(f"conversation {update.id} not found")
        return _conversation(row)

    # message links

    async def link_message(self, spec: LinkSpec) -> tuple[MessageLink, bool]:
        """Record a link, idempotently. Returns it and whether this call created it."""
        async with self.db.connection() as conn:
            return await self._link_message(conn, spec)

    async def _link_message(self, conn: Any, spec: LinkSpec) -> tuple[MessageLink, bool]:
        try:
            row = await conn.fetchrow(
                _INSERT_LINK,
                spec.wamid,
                spec.conversation_id,
                spec.direction.value,
                spec.member_id,
                spec.bitrix_message_id,
                spec.bitrix_chat_id,
                spec.whatsapp_status,
                spec.bitrix_status,
            )
        except asyncpg.exceptions.ForeignKeyViolationError as exc:  # conversation deleted meanwhile
            raise NotFound(f"conversation {spec.conversation_id} not found") from exc
        if row is not None:
            return _link(row), True
        existing = await conn.fetchrow(f"{_SELECT_LINK} WHERE wamid = $1", spec.wamid)
        if existing is not None:
            return await self._same_link(conn, _link(existing), spec), False
        conversation = await conn.fetchrow(
            "SELECT member_id FROM mapper.conversation_mapping WHERE id = $1", spec.conversation_id
        )
        if conversation is None:
            raise NotFound(f"conversation {spec.conversation_id} not found")
        if spec.member_id is not None and conversation["member_id"] != spec.member_id:
            raise InvalidArgument(
                f"member_id {spec.member_id} is not the portal of conversation {spec.conversation_id}"
            )
        raise AlreadyExists(
            f"bitrix message {spec.bitrix_message_id} of portal {conversation['member_id']}"
            " is already linked to another wamid"
        )

    async def _same_link(self, conn: Any, existing: MessageLink, spec: LinkSpec) -> MessageLink:
        """A repeated LinkMessage: the same link (possibly completing a missing Bitrix24 id) or a conflict."""
        _check_same(existing, spec)
        needs = (spec.bitrix_message_id is not None and existing.bitrix_message_id is None) or (
            spec.bitrix_chat_id is not None and existing.bitrix_chat_id is None
        )
        if not needs:
            return existing
        try:
            row = await conn.fetchrow(_COMPLETE_LINK, spec.wamid, spec.bitrix_message_id, spec.bitrix_chat_id)
        except asyncpg.exceptions.UniqueViolationError as exc:
            raise AlreadyExists(
                f"bitrix message {spec.bitrix_message_id} is already linked to another wamid"
            ) from exc
        completed = _link(row)
        _check_same(completed, spec)  # a concurrent completion may have won with other ids
        return completed

    async def _find_link(self, where: str, *args: object) -> MessageLink | None:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(f"{_SELECT_LINK} WHERE {where}", *args)
        return None if row is None else _link(row)

    async def link_by_wamid(self, wamid: str) -> MessageLink | None:
        return await self._find_link("wamid = $1", wamid)

    async def link_by_bitrix_message(self, member_id: str, bitrix_message_id: str) -> MessageLink | None:
        return await self._find_link(
            "member_id = $1 AND bitrix_message_id = $2", member_id, bitrix_message_id
        )

    async def latest_inbound_link(self, conversation_id: uuid.UUID) -> MessageLink | None:
        return await self._find_link(
            "conversation_id = $1 AND direction = 'inbound' ORDER BY created_at DESC, wamid DESC LIMIT 1",
            conversation_id,
        )

    async def update_message_status(
        self, wamid: str, whatsapp_status: str | None, bitrix_status: str | None
    ) -> MessageLink:
        if whatsapp_status is None and bitrix_status is None:
            found = await self.link_by_wamid(wamid)
        else:
            async with self.db.connection() as conn:
                row = await conn.fetchrow(
                    _UPDATE_STATUS,
                    wamid,
                    whatsapp_status,
                    bitrix_status,
                    list(WHATSAPP_STATUSES),
                    list(BITRIX_STATUSES),
                )
            found = None if row is None else _link(row)
        if found is None:
            raise NotFound(f"no message link for wamid {wamid}")
        return found

    async def update_message_statuses(
        self,
        updates: list[tuple[str, str | None, str | None]],
        marks: list[tuple[str, str]] | None = None,
        priced: list[Priced] | None = None,
    ) -> dict[str, MessageLink]:
        """update_message_status for each (wamid, whatsapp_status, bitrix_status): one statement for the
        distinct wamids, the updates of one wamid merged (forward only: the highest of each status).
        ``marks``: (event_id, result) recorded as processed in the same transaction (first result wins).
        ``priced``: pricing objects counted in the cost ledger, once per wamid, in the same transaction."""
        merged: dict[str, tuple[str | None, str | None]] = {}
        for wamid, wa, b24 in updates:
            old_wa, old_b24 = merged.get(wamid, (None, None))
            merged[wamid] = (_later(WHATSAPP_STATUSES, old_wa, wa), _later(BITRIX_STATUSES, old_b24, b24))
        changing = sorted(w for w, (wa, b24) in merged.items() if wa is not None or b24 is not None)
        found: dict[str, MessageLink] = {}
        marks = marks or []
        added: list[UsageRow] = []
        if changing or marks or priced:
            async with self.db.connection() as conn, conn.transaction():
                if marks:  # in event_id order, as the links are in wamid order: no deadlock between batches
                    first = dict(reversed(marks))  # first result wins, as in one statement per mark
                    ids = sorted(first)
                    await conn.execute(_MARK_PROCESSED_MANY, ids, [first[e] for e in ids])
                rows = await conn.fetch(
                    _UPDATE_STATUSES,
                    changing,
                    [merged[w][0] for w in changing],
                    [merged[w][1] for w in changing],
                    list(WHATSAPP_STATUSES),
                    list(BITRIX_STATUSES),
                )
                if priced:  # after the links: every transaction locks links, then ledger rows
                    added = await record_usage(conn, priced)
            found.update((r["wamid"], _link(r)) for r in rows)
            observe(added)
        rest = [w for w in merged if w not in changing]
        if rest:
            found.update(await self.links_by_wamids(rest))
        return found

    # dedupe

    async def check_processed(self, event_id: str) -> str | None:
        """The recorded result when the event was processed, else None."""
        async with self.db.connection() as conn:
            result: str | None = await conn.fetchval(
                "SELECT result FROM mapper.processed_event WHERE event_id = $1", event_id
            )
        return result

    async def mark_processed(self, event_id: str, result: str) -> bool:
        """Record the event; returns True when it already was (the first result is kept)."""
        async with self.db.connection() as conn:
            return await self._mark_processed(conn, event_id, result)

    @staticmethod
    async def _mark_processed(conn: Any, event_id: str, result: str) -> bool:
        inserted = await conn.fetchval(_MARK_PROCESSED, event_id, result)
        return inserted is None

    # all three for one delivered inbound message

    async def record_delivery(
        self, spec: LinkSpec, update: ConversationUpdate, event_id: str, result: str
    ) -> tuple[MessageLink, Conversation, bool]:
        """LinkMessage + UpdateConversation + MarkProcessed in one transaction (all or nothing).

        Returns the link, the conversation and whether the event already was processed. The
        conversation's row lock is taken last, so it is held only for the commit.
        """
        async with self.db.connection() as conn, conn.transaction():
            link, _ = await self._link_message(conn, spec)
            already = await self._mark_processed(conn, event_id, result)
            conversation = await self._update_conversation(conn, update)
        return link, conversation, already

    async def links_by_wamids(self, wamids: list[str]) -> dict[str, MessageLink]:
        """The link of each of ``wamids`` that has one (one statement)."""
        async with self.db.connection() as conn:
            rows = await conn.fetch(_LINKS_BY_WAMIDS, wamids)
        return {r["wamid"]: _link(r) for r in rows}

    async def check_processed_many(self, event_ids: list[str]) -> dict[str, str]:
        """The recorded result of each of ``event_ids`` that was processed (one statement)."""
        async with self.db.connection() as conn:
            rows = await conn.fetch(_CHECK_PROCESSED_MANY, event_ids)
        return {r["event_id"]: r["result"] for r in rows}

    async def record_deliveries(
        self, items: list[tuple[LinkSpec, ConversationUpdate, str, str]]
    ) -> list[tuple[MessageLink, Conversation, bool]]:
        """record_delivery for each item, all in one transaction and one statement per table: the
        links, the processed records, then each conversation once (its updates merged in order, as
        applying them one after the other would). Raises as record_delivery would for the first item
        that fails, and then nothing is recorded (the caller records the items one by one)."""
        specs = [spec for spec, _, _, _ in items]
        merged = merged_updates([u for _, u, _, _ in items])
        if len({s.wamid for s in specs}) == len(specs) and all(u.changes_anything for u in merged):
            try:
                return await self._record_new_deliveries(items, merged)
            except (
                asyncpg.exceptions.InvalidTextRepresentationError,
                asyncpg.exceptions.ForeignKeyViolationError,
            ):
                pass  # something is not new or not there: step by step below, which says what
        async with self.db.connection() as conn, conn.transaction():
            try:
                rows = await conn.fetch(
                    _INSERT_LINKS,
                    *_link_columns(specs),
                )
            except asyncpg.exceptions.ForeignKeyViolationError as exc:
                raise NotFound("a conversation of the list was not found") from exc
            links = {r["wamid"]: _link(r) for r in rows}
            for spec in specs:  # already linked (a retry), conflicting, or no such conversation
                if spec.wamid not in links:
                    links[spec.wamid], _ = await self._link_message(conn, spec)
            inserted = await conn.fetch(
                _MARK_PROCESSED_MANY, [e for _, _, e, _ in items], [r for _, _, _, r in items]
            )
            new = {r["event_id"] for r in inserted}
            conversations = await self._update_conversations(conn, [u for _, u, _, _ in items])
        return _delivery_answers(items, links, conversations, new)

    async def _record_new_deliveries(
        self, items: list[tuple[LinkSpec, ConversationUpdate, str, str]], merged: list[ConversationUpdate]
    ) -> list[tuple[MessageLink, Conversation, bool]]:
        """record_deliveries when every wamid is new and every conversation is there: one statement."""
        specs = [spec for spec, _, _, _ in items]
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                _RECORD_NEW_DELIVERIES,
                *_link_columns(specs),
                [e for _, _, e, _ in items],
                [r for _, _, _, r in items],
                [u.id for u in merged],
                [u.bitrix_contact_id for u in merged],
                [u.bitrix_chat_id for u in merged],
                [u.contact_name for u in merged],
                [u.last_message_at for u in merged],
                [u.last_customer_message_at for u in merged],
                len(specs),
                len(merged),
            )
        links = {r["wamid"]: _link_json(r) for r in json.loads(row["links"])}
        conversations = {c.id: c for c in map(_conversation_json, json.loads(row["conversations"]))}
        new = set(json.loads(row["processed"] or "[]"))
        return _delivery_answers(items, links, conversations, new)

    @staticmethod
    async def _update_conversations(
        conn: Any, updates: list[ConversationUpdate]
    ) -> dict[uuid.UUID, Conversation]:
        merged = {u.id: u for u in merged_updates(updates)}
        changing = [u for u in merged.values() if u.changes_anything]
        found: dict[uuid.UUID, Conversation] = {}
        if changing:
            rows = await conn.fetch(
                _UPDATE_CONVERSATIONS,
                [u.id for u in changing],
                [u.bitrix_contact_id for u in changing],
                [u.bitrix_chat_id for u in changing],
                [u.contact_name for u in changing],
                [u.last_message_at for u in changing],
                [u.last_customer_message_at for u in changing],
            )
            found.update((r["id"], _conversation(r)) for r in rows)
        unchanged = [u.id for u in merged.values() if not u.changes_anything]
        if unchanged:
            rows = await conn.fetch(f"{_SELECT_CONVERSATION} WHERE id = ANY($1::uuid[])", unchanged)
            found.update((r["id"], _conversation(r)) for r in rows)
        missing = next((i for i in merged if i not in found), None)
        if missing is not None:
            raise NotFound(f"conversation {missing} not found")
        return found

    # customer consent

    async def record_consent(self, consent: Consent) -> Consent:
        """Keep the newest change per (channel, customer, category); returns what is recorded now."""
        try:
            async with self.db.connection() as conn:
                row = await conn.fetchrow(_UPSERT_CONSENT, *_consent_args(consent))
        except asyncpg.exceptions.ForeignKeyViolationError as exc:
            raise NotFound(f"phone_number_id {consent.phone_number_id} is not bound") from exc
        return _consent(row)

    async def get_consent(self, phone_number_id: str, wa_id: str, category: str) -> Consent | None:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {_CONSENT_COLUMNS} FROM mapper.customer_consent"  # noqa: S608
                " WHERE phone_number_id = $1 AND wa_id = $2 AND category = $3",
                phone_number_id,
                wa_id,
                category,
            )
        return None if row is None else _consent(row)

    async def expire_processed(self, older_than: timedelta, batch: int) -> int:
        """Delete one batch of records older than `older_than`; returns how many."""
        async with self.db.connection() as conn:
            status: str = await conn.execute(_EXPIRE_PROCESSED, older_than, batch)
        return int(status.rsplit(" ", 1)[-1])

    async def now(self) -> datetime:
        async with self.db.connection() as conn:
            value: datetime = await conn.fetchval("SELECT now()")
        return value


def _when(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _link_json(r: dict[str, Any]) -> MessageLink:
    """A message_link row as json_agg writes it."""
    return MessageLink(
        **{
            **r,
            "conversation_id": uuid.UUID(r["conversation_id"]),
            "direction": Direction(r["direction"]),
            "created_at": _when(r["created_at"]),
            "updated_at": _when(r["updated_at"]),
        }
    )


def _conversation_json(r: dict[str, Any]) -> Conversation:
    """A conversation_mapping row (CONVERSATION_COLUMNS) as json_agg writes it."""
    times = ("last_message_at", "last_customer_message_at", "created_at", "updated_at")
    return Conversation(**{**r, "id": uuid.UUID(r["id"]), **{k: _when(r[k]) for k in times}})


def merged_updates(updates: list[ConversationUpdate]) -> list[ConversationUpdate]:
    """One update per conversation with the effect of its updates in order, sorted by id (the order rows
    are locked in)."""
    merged: dict[uuid.UUID, ConversationUpdate] = {}
    for u in updates:
        merged[u.id] = merge_updates(merged[u.id], u) if u.id in merged else u
    return sorted(merged.values(), key=lambda u: u.id)


def _later(order: Any, a: str | None, b: str | None) -> str | None:
    """Of two statuses (None: not set), the one further along ``order``."""
    if a is None or b is None:
        return b if a is None else a
    ranks = list(order)
    return b if ranks.index(b) >= ranks.index(a) else a


def merge_updates(first: ConversationUpdate, then: ConversationUpdate) -> ConversationUpdate:
    """One update with the effect of ``first`` and then ``then``: a given text field of the later one
    wins, timestamps take the later of both (they only move forward)."""

    def later(a: datetime | None, b: datetime | None) -> datetime | None:
        return a if b is None else b if a is None else max(a, b)

    return ConversationUpdate(
        id=first.id,
        bitrix_contact_id=first.bitrix_contact_id
        if then.bitrix_contact_id is None
        else then.bitrix_contact_id,
        bitrix_chat_id=first.bitrix_chat_id if then.bitrix_chat_id is None else then.bitrix_chat_id,
        contact_name=first.contact_name if then.contact_name is None else then.contact_name,
        last_message_at=later(first.last_message_at, then.last_message_at),
        last_customer_message_at=later(first.last_customer_message_at, then.last_customer_message_at),
    )


def _check_same(existing: MessageLink, spec: LinkSpec) -> None:
    def differs(have: object, want: object) -> bool:
        return want is not None and have is not None and have != want

    if existing.conversation_id != spec.conversation_id or existing.direction != spec.direction:
        raise AlreadyExists(
            f"wamid {spec.wamid} is already linked ({existing.direction.value}, conversation"
            f" {existing.conversation_id})"
        )
    if differs(existing.member_id, spec.member_id) or differs(
        existing.bitrix_message_id, spec.bitrix_message_id
    ):
        raise AlreadyExists(
            f"wamid {spec.wamid} is already linked to bitrix message {existing.bitrix_message_id}"
            f" of portal {existing.member_id}"
        )
    if differs(existing.bitrix_chat_id, spec.bitrix_chat_id):
        raise AlreadyExists(f"wamid {spec.wamid} is already linked to bitrix chat {existing.bitrix_chat_id}")
