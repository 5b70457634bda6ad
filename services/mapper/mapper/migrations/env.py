"""Alembic environment, driven programmatically by mapper.migrate: no alembic.ini, no URL here.

mapper.migrate opens the connection, takes the advisory lock inside its transaction and passes the
connection in ``config.attributes["connection"]``; everything below runs in that one transaction
(PostgreSQL DDL is transactional), so a failed upgrade leaves nothing half-applied.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from mapper.migrate import SCHEMA, VERSION_TABLE

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("run the mapper migrations through mapper-migrate (mapper.migrate.upgrade)")

# The version table lives inside the schema, so the schema must exist before alembic looks for it.
# The first revision creates it too (IF NOT EXISTS) so that the schema's history reads complete.
connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
context.configure(
    connection=connection,
    version_table=VERSION_TABLE,
    version_table_schema=SCHEMA,
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
