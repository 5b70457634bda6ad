"""Cost ledger and data lifecycle: monthly usage aggregates, portal uninstall marks, and the indexes the
retention sweeps walk.

The ledger holds only counts per (portal, channel, month, pricing fields): no wamid, no customer, so an
erase never needs to touch it. Exactly-once counting marks the message's link (usage_counted) in the same
statement as the count: the mark lives as long as the link. Adding a column with a constant default
rewrites nothing (PostgreSQL 11+).

Revision ID: usage
Revises: templates
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "usage"
down_revision = "templates"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE mapper.message_link ADD COLUMN usage_counted boolean NOT NULL DEFAULT false;
CREATE TABLE mapper.usage_monthly (
    member_id        text NOT NULL,
    phone_number_id  text NOT NULL,
    month            date NOT NULL CHECK (extract(day FROM month) = 1),
    category         text NOT NULL,
    pricing_type     text NOT NULL,
    pricing_model    text NOT NULL,
    billable         boolean NOT NULL,
    messages         bigint NOT NULL DEFAULT 0 CHECK (messages >= 0),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (member_id, month, phone_number_id, category, pricing_type, pricing_model, billable)
);

-- The app was uninstalled from the portal at uninstalled_at: the retention job removes the portal's
-- data once the grace period has passed. A new install deletes the row.
CREATE TABLE mapper.portal_uninstall (
    member_id       text PRIMARY KEY,
    uninstalled_at  timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);

-- Retention walks links by age and conversations by last activity, oldest first, in small batches.
CREATE INDEX message_link_created_at_idx ON mapper.message_link (created_at);
CREATE INDEX conversation_mapping_activity_idx
    ON mapper.conversation_mapping ((COALESCE(last_message_at, created_at)));
CREATE INDEX conversation_mapping_member_idx ON mapper.conversation_mapping (member_id)
"""

DOWNGRADE = """
DROP INDEX mapper.conversation_mapping_member_idx;
DROP INDEX mapper.conversation_mapping_activity_idx;
DROP INDEX mapper.message_link_created_at_idx;
DROP TABLE mapper.portal_uninstall;
DROP TABLE mapper.usage_monthly;
ALTER TABLE mapper.message_link DROP COLUMN usage_counted
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
