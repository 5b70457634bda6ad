"""Customer consent per channel: the latest user_preferences answer (marketing stop / resume).

Revision ID: consent
Revises: identity_aliases
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "consent"
down_revision = "identity_aliases"
branch_labels = None
depends_on = None

UPGRADE = """
-- One row per (channel, customer, category): the latest change Meta reported (webhook user_preferences).
-- No row: no preference known (marketing allowed).
CREATE TABLE mapper.customer_consent (
    phone_number_id  text NOT NULL REFERENCES mapper.channel_binding (phone_number_id),
    wa_id            text NOT NULL,
    category         text NOT NULL,
    value            text NOT NULL CHECK (value IN ('stop', 'resume')),
    detail           text NOT NULL DEFAULT '',
    changed_at       timestamptz NOT NULL,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (phone_number_id, wa_id, category)
)
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute("DROP TABLE mapper.customer_consent")
