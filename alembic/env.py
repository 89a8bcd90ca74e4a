"""Alembic environment: the URL comes from Settings; an injected connection wins."""

from __future__ import annotations

from logging.config import fileConfig

from sqlalchemy import Connection, pool

from alembic import context
from ticker_tasks.db import models  # noqa: F401  (registers every table on the metadata)
from ticker_tasks.db.base import Base
from ticker_tasks.db.engine import build_engine
from ticker_tasks.settings import settings_or_exit

config = context.config
if config.config_file_name is not None and not config.attributes.get("skip_logging"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        compare_server_default=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )


def run_migrations_offline() -> None:
    """Emit SQL to stdout for the configured database (``alembic upgrade head --sql``)."""
    url = config.attributes.get("url") or settings_or_exit().database_url
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run migrations on an injected connection, or on a fresh engine from Settings."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.attributes.get("url")
    engine = build_engine(settings_or_exit(), url=url, poolclass=pool.NullPool)
    with engine.connect() as fresh:
        _configure(fresh)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
