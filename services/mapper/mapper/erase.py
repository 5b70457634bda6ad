"""Erase a person: everything the mapper holds about one customer of one channel (zaptrix-admin erase).

Found by any identifier the person has had on the channel (phone, BSUID, parent BSUID: not a username,
which can move to someone else). Removed in one transaction: the conversation(s), their message links,
identity aliases, consent records, and the dedupe records whose ids carry the person's wamids, phone or
BSUID, Bitrix24 message ids or chat. The cost ledger holds monthly counts only (ledger.py): nothing of the
person is in it. What lives elsewhere (Bitrix24, Meta, Kafka) is returned for the operator to act on.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mapper.metrics import RETENTION_REMOVED

PERSON_KINDS = ["phone", "bsuid", "parent_bsuid"]

_CONVERSATIONS = """
SELECT id, member_id, meta_whatsapp_id, external_chat_id, bitrix_chat_id, bitrix_contact_id, bitrix_user_id,
    customer_phone, customer_user_id, customer_parent_user_id, customer_username
FROM mapper.conversation_mapping
WHERE phone_number_id = $1 AND (meta_whatsapp_id = $2 OR customer_phone = $2 OR customer_user_id = $2
    OR id IN (SELECT conversation_id FROM mapper.conversation_alias
              WHERE phone_number_id = $1 AND value = $2 AND kind = ANY($3::text[])))
ORDER BY created_at"""

_ALIASES = """
SELECT kind, value FROM mapper.conversation_alias WHERE conversation_id = ANY($1::uuid[]) ORDER BY 1, 2"""

_LINKS = """
SELECT wamid, bitrix_message_id, bitrix_chat_id FROM mapper.message_link
WHERE conversation_id = ANY($1::uuid[]) ORDER BY created_at"""

_CONSENT_WHERE = "phone_number_id = $1 AND wa_id = ANY($2::text[])"
# Dedupe ids are "<kind>:<part 2>:<part 3>..." (normalize.py and web/events.py name them; no part holds a
# colon). A record is the person's when its second part is one of their wamids (wa:<w>, wa-status:<w>:...,
# wa-echo:<w>, ...), when its result is one (a send confirmation), or when (kind, part 2, part 3) is one of
# theirs (wa-contact:<number>:<phone>:..., b24:<portal>:<message id>, ...). One pass over the table with
# hashed look-ups, however many messages the person has (a LIKE per wamid would be quadratic).
_PROCESSED_WHERE = """
    split_part(event_id, ':', 2) IN (SELECT unnest($1::text[]))
    OR result IN (SELECT unnest($1::text[]))
    OR (split_part(event_id, ':', 1), split_part(event_id, ':', 2), split_part(event_id, ':', 3))
        IN (SELECT * FROM unnest($2::text[], $3::text[], $4::text[]))"""


@dataclass
class Person:
    """What the mapper holds about one customer of one channel."""

    phone_number_id: str
    customer: str
    conversations: list[dict[str, Any]] = field(default_factory=list)
    aliases: list[tuple[str, str]] = field(default_factory=list)
    links: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def conversation_ids(self) -> list[uuid.UUID]:
        return [c["id"] for c in self.conversations]

    @property
    def identifiers(self) -> list[str]:
        """Every phone / BSUID the person has had here (the keys of consent and dedupe records)."""
        values = {v for k, v in self.aliases if k in PERSON_KINDS} | {self.customer}
        for c in self.conversations:
            values |= {c[k] for k in ("meta_whatsapp_id", "customer_phone", "customer_user_id") if c[k]}
        return sorted(values)

    def dedupe_keys(self) -> tuple[list[str], list[str], list[str], list[str]]:
        """The arguments of _PROCESSED_WHERE: the person's wamids, and their (kind, part 2, part 3) keys as
        three columns."""
        wamids = [link["wamid"] for link in self.links]
        keys: list[tuple[str, str, str]] = []
        for v in self.identifiers:
            keys += [("wa-contact", self.phone_number_id, v), ("wa-consent", self.phone_number_id, v)]
        for c in self.conversations:
            member = c["member_id"]
            if c["bitrix_chat_id"]:
                keys.append(("b24-read", member, c["bitrix_chat_id"]))
            for link in self.links:
                if link["bitrix_message_id"]:
                    m = link["bitrix_message_id"]
                    keys += [(kind, member, m) for kind in ("b24", "b24-edit", "b24-del", "wa-fail")]
        return wamids, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]

    def elsewhere(self) -> list[dict[str, Any]]:
        """What Zaptrix cannot remove, with the ids needed to remove it there."""
        out: list[dict[str, Any]] = []
        for c in self.conversations:
            out.append(
                {
                    "where": "Bitrix24",
                    "portal": c["member_id"],
                    "open_lines_chat_id": c["bitrix_chat_id"],
                    "crm_contact_id": c["bitrix_contact_id"],
                    "connector_user_id": c["bitrix_user_id"],
                    "external_chat_id": c["external_chat_id"],
                    "how": "delete the CRM contact (crm.contact.delete or the CRM card) and the Open Lines"
                    " chat's history (Bitrix24's personal-data tools); the chat's messages stay in"
                    " Bitrix24 until then",
                }
            )
        out.append(
            {
                "where": "Meta (WhatsApp Cloud API)",
                "phone_number_id": self.phone_number_id,
                "customer": self.customer,
                "wamids": [link["wamid"] for link in self.links],
                "how": "Meta keeps its own copy of the messages under its retention; the Cloud API has no call"
                " to delete a delivered message: send a data-subject request to Meta naming the number and"
                " these message ids",
            }
        )
        out.append(
            {
                "where": "Kafka topics, logs and traces",
                "how": "events of this person stay on the topics (and dead-letter topics) until Kafka's"
                " retention removes them (7 days by default); logs and traces keep ids such as wamids for"
                " their own retention",
            }
        )
        return out


async def find_person(conn: Any, phone_number_id: str, customer: str) -> Person:
    """The person's records and, per table, how many rows an erase removes."""
    person = Person(phone_number_id, customer)
    person.conversations = [
        dict(r) for r in await conn.fetch(_CONVERSATIONS, phone_number_id, customer, PERSON_KINDS)
    ]
    ids = person.conversation_ids
    person.aliases = [(r["kind"], r["value"]) for r in await conn.fetch(_ALIASES, ids)]
    person.links = [dict(r) for r in await conn.fetch(_LINKS, ids)]
    dedupe = person.dedupe_keys()
    person.counts = {
        "conversation_mapping": len(ids),
        "message_link": len(person.links),
        "conversation_alias": len(person.aliases),
        "customer_consent": await conn.fetchval(
            f"SELECT count(*) FROM mapper.customer_consent WHERE {_CONSENT_WHERE}",  # noqa: S608
            phone_number_id,
            person.identifiers,
        ),
        "processed_event": await conn.fetchval(
            f"SELECT count(*) FROM mapper.processed_event WHERE {_PROCESSED_WHERE}",  # noqa: S608
            *dedupe,
        ),
    }
    return person


async def erase_person(
    conn: Any, person: Person, step: Callable[[str, int], None] = lambda table, n: None
) -> dict[str, int]:
    """Remove the person's rows (found by find_person on the same connection) in one transaction; `step`
    is told each table as it is done. Returns rows removed per table."""
    ids = person.conversation_ids
    dedupe = person.dedupe_keys()
    statements: list[tuple[str, str, tuple[Any, ...]]] = [
        (
            "processed_event",
            f"DELETE FROM mapper.processed_event WHERE {_PROCESSED_WHERE}",  # noqa: S608
            dedupe,
        ),
        (
            "customer_consent",
            f"DELETE FROM mapper.customer_consent WHERE {_CONSENT_WHERE}",  # noqa: S608
            (person.phone_number_id, person.identifiers),
        ),
        ("message_link", "DELETE FROM mapper.message_link WHERE conversation_id = ANY($1::uuid[])", (ids,)),
        (
            "conversation_alias",
            "DELETE FROM mapper.conversation_alias WHERE conversation_id = ANY($1::uuid[])",
            (ids,),
        ),
        (
            "conversation_mapping",
            "DELETE FROM mapper.conversation_mapping WHERE id = ANY($1::uuid[])",
            (ids,),
        ),
    ]
    removed: dict[str, int] = {}
    async with conn.transaction():
        for table, query, args in statements:
            status: str = await conn.execute(query, *args)
            removed[table] = int(status.rsplit(" ", 1)[-1])
            step(table, removed[table])
    for table, n in removed.items():
        if n:
            RETENTION_REMOVED.labels(table).inc(n)
    return removed
