"""Customers as people: identity aliases {phone, BSUID, parent BSUID, username} per channel.

Since 2026 a WhatsApp customer may write with no phone number (only a business-scoped user id, BSUID,
and a username), and a BSUID changes when the customer changes number. A conversation stays keyed by
its first key (meta_whatsapp_id: the phone when known, else the BSUID) and is found by any alias.

The conversation also carries the customer's current address (customer_phone / customer_user_id) and the
user.id we give Bitrix24 (bitrix_user_id). Existing conversations keep the id Bitrix24 already has
(their wa_id); new ones get their opaque external chat id (filled by a trigger, so every insert path
gets one).

Revision ID: identity_aliases
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "identity_aliases"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE mapper.conversation_mapping
    ADD COLUMN customer_phone text,
    ADD COLUMN customer_user_id text,
    ADD COLUMN customer_parent_user_id text,
    ADD COLUMN customer_username text,
    ADD COLUMN bitrix_user_id text;
UPDATE mapper.conversation_mapping
    SET customer_phone = meta_whatsapp_id, bitrix_user_id = meta_whatsapp_id;
ALTER TABLE mapper.conversation_mapping ALTER COLUMN bitrix_user_id SET NOT NULL;
CREATE FUNCTION mapper.conversation_bitrix_user_id() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN NEW.bitrix_user_id := COALESCE(NEW.bitrix_user_id, NEW.external_chat_id); RETURN NEW; END
$$;
CREATE TRIGGER conversation_bitrix_user_id BEFORE INSERT ON mapper.conversation_mapping
    FOR EACH ROW EXECUTE FUNCTION mapper.conversation_bitrix_user_id();

-- Every identifier a person has had on a channel. One alias names one conversation; a username can
-- move to another person (it is re-pointed), a phone or BSUID found on two conversations merges them.
CREATE TABLE mapper.conversation_alias (
    phone_number_id  text NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('phone', 'bsuid', 'parent_bsuid', 'username')),
    value            text NOT NULL CHECK (length(value) BETWEEN 1 AND 160),
    conversation_id  uuid NOT NULL REFERENCES mapper.conversation_mapping (id) ON DELETE CASCADE,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (phone_number_id, kind, value)
);
CREATE INDEX conversation_alias_conversation_idx ON mapper.conversation_alias (conversation_id);
INSERT INTO mapper.conversation_alias (phone_number_id, kind, value, conversation_id)
    SELECT phone_number_id, 'phone', meta_whatsapp_id, id FROM mapper.conversation_mapping
"""

DOWNGRADE = """
DROP TABLE mapper.conversation_alias;
DROP TRIGGER conversation_bitrix_user_id ON mapper.conversation_mapping;
DROP FUNCTION mapper.conversation_bitrix_user_id();
ALTER TABLE mapper.conversation_mapping
    DROP COLUMN customer_phone,
    DROP COLUMN customer_user_id,
    DROP COLUMN customer_parent_user_id,
    DROP COLUMN customer_username,
    DROP COLUMN bitrix_user_id
"""


def _execute_script(script: str) -> None:
    # One statement per call (asyncpg refuses several); the function body holds no ";\n".
    for statement in script.split(";\n"):
        if statement.strip():
            op.execute(statement)


def upgrade() -> None:
    _execute_script(UPGRADE)


def downgrade() -> None:
    _execute_script(DOWNGRADE)
