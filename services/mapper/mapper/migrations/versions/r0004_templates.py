"""Template catalogue per channel: the message templates of the channel's WhatsApp Business account.

Revision ID: templates
Revises: consent
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "templates"
down_revision = "consent"
branch_labels = None
depends_on = None

UPGRADE = """
-- One row per (channel, template id): Meta's template id names one name+language of a WABA. A full sync
-- replaces a channel's rows; the template webhooks update status, quality and category by
-- (waba_id, template_id), across the channels of that WABA, only when newer than changed_at.
CREATE TABLE mapper.message_template (
    phone_number_id   text NOT NULL REFERENCES mapper.channel_binding (phone_number_id) ON DELETE CASCADE,
    template_id       text NOT NULL,
    waba_id           text NOT NULL,
    name              text NOT NULL,
    language          text NOT NULL,
    status            text NOT NULL,
    category          text NOT NULL DEFAULT '',
    quality           text NOT NULL DEFAULT '',
    parameter_format  text NOT NULL DEFAULT 'POSITIONAL',
    components        jsonb NOT NULL DEFAULT '[]'::jsonb,
    changed_at        timestamptz NOT NULL,
    PRIMARY KEY (phone_number_id, template_id)
)
"""
INDEX = "CREATE INDEX message_template_waba_idx ON mapper.message_template (waba_id, template_id)"


def upgrade() -> None:
    op.execute(UPGRADE)
    op.execute(INDEX)


def downgrade() -> None:
    op.execute("DROP TABLE mapper.message_template")
