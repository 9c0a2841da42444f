"""Alembic environment: run with the connection ``dashboard.db.migrate`` hands over."""

from __future__ import annotations

from alembic import context

from dashboard.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
