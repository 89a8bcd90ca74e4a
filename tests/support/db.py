"""Database helpers for tests."""

from __future__ import annotations

from sqlalchemy import Engine, text

from ticker_tasks.db.base import Base


def truncate_all(engine: Engine) -> None:
    """Empty every table of the models (identities restarted)."""
    tables = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
