"""Alembic scripts of the mapper schema. Run them with `mapper-migrate` (see mapper.migrate)."""
