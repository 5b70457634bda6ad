"""Initial schema: portal_config and channel_credentials, every secret AES-GCM encrypted (bytea).

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from token_keeper.migrate import CREATE_SCHEMA_SQL

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA = "token_keeper"


def _timestamps() -> list[sa.Column[object]]:
    return [
        sa.Column(
            "created_at", postgresql.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", postgresql.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    ]


def upgrade() -> None:
    # env.py already creates the schema (the version table lives in it); kept here so that offline SQL and a
    # reader of this file see where the schema comes from.
    op.execute(CREATE_SCHEMA_SQL)
    op.create_table(
        "portal_config",
        sa.Column("member_id", sa.Text(), primary_key=True),
        sa.Column("domain", sa.Text(), nullable=False),
        sa.Column("client_endpoint", sa.Text(), nullable=False),
        sa.Column("server_endpoint", sa.Text(), nullable=False, server_default=""),
        sa.Column("client_id", sa.Text(), nullable=False),
        sa.Column("client_secret_enc", sa.LargeBinary(), nullable=False),
        sa.Column("access_token_enc", sa.LargeBinary(), nullable=True),
        sa.Column("refresh_token_enc", sa.LargeBinary(), nullable=False),
        sa.Column("application_token_enc", sa.LargeBinary(), nullable=True),
        sa.Column("access_expires_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("refresh_obtained_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False, server_default=""),
        sa.Column("state", sa.Text(), nullable=False, server_default="active"),
        sa.Column("last_error", sa.Text(), nullable=False, server_default=""),
        sa.Column("last_error_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("last_refresh_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("last_refresh_failed_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("refresh_count", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("key_id", sa.Text(), nullable=False),
        *_timestamps(),
        sa.CheckConstraint(
            "state IN ('active', 'needs_reauth', 'uninstalled')", name="portal_config_state_check"
        ),
        schema=SCHEMA,
    )
    # The idle sweep looks for active portals whose refresh token is getting old.
    op.create_index(
        "portal_config_refresh_obtained_idx",
        "portal_config",
        ["refresh_obtained_at"],
        schema=SCHEMA,
        postgresql_where=sa.text("state = 'active'"),
    )
    op.create_table(
        "channel_credentials",
        sa.Column("phone_number_id", sa.Text(), primary_key=True),
        sa.Column("waba_id", sa.Text(), nullable=False, server_default=""),
        sa.Column("access_token_enc", sa.LargeBinary(), nullable=True),
        sa.Column("app_secret_enc", sa.LargeBinary(), nullable=True),
        sa.Column("verify_token_enc", sa.LargeBinary(), nullable=True),
        # HMAC-SHA256 of the verify token under a key derived from key_id's key: CheckVerifyToken is an index
        # lookup, not a decryption scan. Not unique: one Meta app (one verify token) serves many numbers.
        sa.Column("verify_token_hash", sa.LargeBinary(), nullable=True),
        sa.Column("key_id", sa.Text(), nullable=False),
        *_timestamps(),
        schema=SCHEMA,
    )
    op.create_index(
        "channel_credentials_verify_hash_idx", "channel_credentials", ["verify_token_hash"], schema=SCHEMA
    )


def downgrade() -> None:
    op.drop_table("channel_credentials", schema=SCHEMA)
    op.drop_table("portal_config", schema=SCHEMA)
    # The schema stays: alembic's version table lives in it.
