"""Initial mapper schema: channel bindings, conversations, message links, dedupe records.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = """
CREATE SCHEMA IF NOT EXISTS mapper;

-- A WhatsApp number (phone_number_id) bound to one Bitrix24 portal (member_id), Open Line and connector.
CREATE TABLE mapper.channel_binding (
    phone_number_id        text PRIMARY KEY,
    display_phone_number   text NOT NULL DEFAULT '',
    member_id              text NOT NULL,
    line_id                bigint NOT NULL CHECK (line_id > 0),
    connector_id           text NOT NULL,
    crm_mode               text NOT NULL DEFAULT 'gateway' CHECK (crm_mode IN ('gateway', 'open_line')),
    reengagement_template  text,
    template_language      text,
    active                 boolean NOT NULL DEFAULT true,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX channel_binding_member_idx ON mapper.channel_binding (member_id);

-- One conversation per (channel, customer). member_id is copied from the binding at creation and
-- never changes (a channel can only move to another portal while it has no conversations).
CREATE TABLE mapper.conversation_mapping (
    id                        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    phone_number_id           text NOT NULL REFERENCES mapper.channel_binding (phone_number_id),
    meta_whatsapp_id          text NOT NULL,
    member_id                 text NOT NULL,
    external_chat_id          text NOT NULL,
    bitrix_contact_id         text,
    bitrix_chat_id            text,
    contact_name              text,
    last_message_at           timestamptz,
    last_customer_message_at  timestamptz,
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT conversation_mapping_channel_customer_key UNIQUE (phone_number_id, meta_whatsapp_id),
    CONSTRAINT conversation_mapping_external_chat_id_key UNIQUE (external_chat_id)
);
-- The reverse path: an operator's message names the portal and Bitrix24's chat.
CREATE INDEX conversation_mapping_bitrix_chat_idx
    ON mapper.conversation_mapping (member_id, bitrix_chat_id) WHERE bitrix_chat_id IS NOT NULL;

-- wamid <-> Bitrix24 message id, with the status each side last reported.
CREATE TABLE mapper.message_link (
    wamid              text PRIMARY KEY,
    conversation_id    uuid NOT NULL REFERENCES mapper.conversation_mapping (id) ON DELETE CASCADE,
    direction          text NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    member_id          text NOT NULL,
    bitrix_message_id  text,
    bitrix_chat_id     text,
    whatsapp_status    text,
    bitrix_status      text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX message_link_bitrix_message_key
    ON mapper.message_link (member_id, bitrix_message_id) WHERE bitrix_message_id IS NOT NULL;
CREATE INDEX message_link_conversation_idx ON mapper.message_link (conversation_id);

-- Dedupe: event ids whose effect happened. Rows older than the retention are deleted in batches.
CREATE TABLE mapper.processed_event (
    event_id      text PRIMARY KEY,
    result        text NOT NULL DEFAULT '',
    processed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX processed_event_processed_at_idx ON mapper.processed_event (processed_at);
"""

# The schema itself stays: alembic's version table lives in it.
DOWNGRADE = """
DROP TABLE mapper.processed_event;
DROP TABLE mapper.message_link;
DROP TABLE mapper.conversation_mapping;
DROP TABLE mapper.channel_binding;
"""


def _execute_script(script: str) -> None:
    # One statement per call: asyncpg prepares each statement and refuses several at once.
    for statement in script.split(";\n"):
        if statement.strip():
            op.execute(statement)


def upgrade() -> None:
    _execute_script(UPGRADE)


def downgrade() -> None:
    _execute_script(DOWNGRADE)
