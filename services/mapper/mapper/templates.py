"""The template catalogue (issue 16): each channel's message templates, as the Graph API lists them and as
the template webhooks change them. PostgreSQL table mapper.message_template (r0004_templates)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from zaptrix.database import Database
from zaptrix.v1 import mapper_pb2 as pb

from mapper.convert import MAX_TEXT, checked, required
from mapper.errors import InvalidArgument, NotFound

MAX_TEMPLATES = 6000  # Meta's ceiling per verified WABA (whatsapp.md A6); a sync above it is refused
MAX_COMPONENTS_BYTES = 64 * 1024  # one template's components; Meta's own limits keep them far smaller
PARAMETER_FORMATS = ("POSITIONAL", "NAMED")


@dataclass(frozen=True, slots=True)
class Template:
    phone_number_id: str
    template_id: str
    waba_id: str
    name: str
    language: str
    status: str
    category: str
    quality: str
    parameter_format: str
    components: str  # JSON array text
    changed_at: datetime


@dataclass(frozen=True, slots=True)
class Update:
    waba_id: str
    template_id: str
    status: str
    quality: str
    category: str
    at: datetime


_COLUMNS = (
    "phone_number_id, template_id, waba_id, name, language, status, category, quality, parameter_format,"
    " components::text AS components, changed_at"
)

# One statement for the whole listing: unnest the columns, upsert, then remove what the listing lacks.
_REPLACE = """
WITH incoming AS (
    SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                         $8::text[], $9::text[])
        AS t(template_id, name, language, status, category, quality, parameter_format, components)
), up AS (
    INSERT INTO mapper.message_template AS m (phone_number_id, template_id, waba_id, name, language,
        status, category, quality, parameter_format, components, changed_at)
    SELECT $1, template_id, $10, name, language, status, category, quality, parameter_format,
           components::jsonb, $11 FROM incoming
    ON CONFLICT (phone_number_id, template_id) DO UPDATE
        SET waba_id = EXCLUDED.waba_id, name = EXCLUDED.name, language = EXCLUDED.language,
            status = EXCLUDED.status, category = EXCLUDED.category, quality = EXCLUDED.quality,
            parameter_format = EXCLUDED.parameter_format, components = EXCLUDED.components,
            changed_at = EXCLUDED.changed_at
    RETURNING 1
), gone AS (
    DELETE FROM mapper.message_template
    WHERE phone_number_id = $1 AND template_id <> ALL($2::text[])
    RETURNING 1
)
SELECT (SELECT count(*) FROM up) AS stored, (SELECT count(*) FROM gone) AS removed
"""

# A webhook older than what is stored (Meta does not order webhooks; a sync read later) changes nothing.
_UPDATE = """
UPDATE mapper.message_template
SET status = COALESCE(NULLIF($3, ''), status),
    quality = COALESCE(NULLIF($4, ''), quality),
    category = COALESCE(NULLIF($5, ''), category),
    changed_at = $6
WHERE waba_id = $1 AND template_id = $2 AND changed_at <= $6
"""


def _template(r: asyncpg.Record) -> Template:
    return Template(**dict(r))


class Catalogue:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def replace(
        self, phone_number_id: str, waba_id: str, templates: list[Template], synced_at: datetime
    ) -> tuple[int, int]:
        """Store a full listing of the channel's templates; (stored, removed)."""
        if len(templates) > MAX_TEMPLATES:
            raise InvalidArgument(f"more than {MAX_TEMPLATES} templates")
        if len({t.template_id for t in templates}) != len(templates):
            raise InvalidArgument("a template id is listed twice")
        columns: list[list[str]] = [[] for _ in range(8)]
        for t in templates:
            for i, v in enumerate(
                (t.template_id, t.name, t.language, t.status, t.category, t.quality, t.parameter_format)
            ):
                columns[i].append(v)
            columns[7].append(t.components)
        try:
            async with self.db.connection() as conn, conn.transaction():
                row = await conn.fetchrow(_REPLACE, phone_number_id, *columns, waba_id, synced_at)
        except asyncpg.exceptions.ForeignKeyViolationError as exc:
            raise NotFound(f"phone_number_id {phone_number_id} is not bound") from exc
        return int(row["stored"]), int(row["removed"])

    async def apply(self, update: Update) -> tuple[int, list[str]]:
        """Apply one webhook to every channel holding the template; (rows changed, the WABA's channels)."""
        async with self.db.connection() as conn:
            status = await conn.execute(
                _UPDATE,
                update.waba_id,
                update.template_id,
                update.status,
                update.quality,
                update.category,
                update.at,
            )
            rows = await conn.fetch(
                "SELECT DISTINCT phone_number_id FROM mapper.message_template WHERE waba_id = $1 ORDER BY 1",
                update.waba_id,
            )
        return int(status.rsplit(" ", 1)[-1]), [r["phone_number_id"] for r in rows]

    async def list(
        self, member_id: str, phone_number_id: str, approved_only: bool, name: str
    ) -> list[Template]:
        """The channel's templates, only for the portal the channel is bound to (else NotFound, as for an
        unknown channel: no oracle of other portals' numbers)."""
        async with self.db.connection() as conn:
            owner = await conn.fetchval(
                "SELECT member_id FROM mapper.channel_binding WHERE phone_number_id = $1", phone_number_id
            )
            if owner is None or owner != member_id:
                raise NotFound(f"phone_number_id {phone_number_id} is not a channel of this portal")
            query = f"SELECT {_COLUMNS} FROM mapper.message_template WHERE phone_number_id = $1"  # noqa: S608
            args: list[Any] = [phone_number_id]
            if approved_only:
                query += " AND status = 'APPROVED'"
            if name:
                args.append(name)
                query += f" AND name = ${len(args)}"
            rows = await conn.fetch(query + " ORDER BY name, language", *args)
        return [_template(r) for r in rows]


def components_json(text: str) -> str:
    """The components as canonical JSON text: an array of objects, bounded; else InvalidArgument."""
    if len(text) > MAX_COMPONENTS_BYTES:
        raise InvalidArgument(f"components_json is larger than {MAX_COMPONENTS_BYTES} bytes")
    try:
        value = json.loads(text or "[]")
    except (ValueError, RecursionError) as exc:
        raise InvalidArgument("components_json is not JSON") from exc
    if not isinstance(value, list) or not all(isinstance(c, dict) for c in value):
        raise InvalidArgument("components_json must be an array of objects")
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def template(t: pb.MessageTemplate, phone_number_id: str, waba_id: str, synced_at: datetime) -> Template:
    """One listed template, checked (a sync comes from our own dispatcher, but is still bounded)."""
    fmt = (t.parameter_format or "POSITIONAL").upper()
    if fmt not in PARAMETER_FORMATS:
        raise InvalidArgument(f"parameter_format must be one of {', '.join(PARAMETER_FORMATS)}")
    return Template(
        phone_number_id=phone_number_id,
        template_id=required(t.template_id, "template_id"),
        waba_id=waba_id,
        name=required(t.name, "name", MAX_TEXT),
        language=required(t.language, "language", 32),
        status=required(t.status, "status", 64),
        category=checked(t.category, "category", 64),
        quality=checked(t.quality, "quality", 64),
        parameter_format=fmt,
        components=components_json(t.components_json),
        changed_at=synced_at,
    )


def template_pb(t: Template) -> pb.MessageTemplate:
    out = pb.MessageTemplate(
        phone_number_id=t.phone_number_id,
        waba_id=t.waba_id,
        template_id=t.template_id,
        name=t.name,
        language=t.language,
        status=t.status,
        category=t.category,
        quality=t.quality,
        components_json=t.components,
        parameter_format=t.parameter_format,
    )
    out.updated_at.FromDatetime(t.changed_at)
    return out
