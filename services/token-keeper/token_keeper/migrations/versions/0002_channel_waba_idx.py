"""channel_credentials: an index on waba_id, for GetWabaAppSecret (WABA-level webhooks of a cold pod).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SCHEMA = "token_keeper"


def upgrade() -> None:
    # An unauthenticated webhook can make meta-ingress ask for any WABA id (each once, then cached):
    # an index lookup, never a scan of every channel. Partial: only channels that can sign.
    op.create_index(
        "channel_credentials_waba_idx",
        "channel_credentials",
        ["waba_id", "phone_number_id"],
        schema=SCHEMA,
        postgresql_where="app_secret_enc IS NOT NULL",
    )


def downgrade() -> None:
    op.drop_index("channel_credentials_waba_idx", table_name="channel_credentials", schema=SCHEMA)
