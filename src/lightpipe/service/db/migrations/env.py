"""Alembic's environment for the service's database: the engine comes from lightpipe, not from an ini file."""
from __future__ import annotations

from alembic import context

from lightpipe.service.db.models import Base

with context.config.attributes["engine"].connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
