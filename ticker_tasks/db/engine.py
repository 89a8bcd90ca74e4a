"""Engine and session factory, built per process from Settings (never at import)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from ticker_tasks.settings import Settings


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def build_engine(settings: Settings, *, url: str | None = None, **kwargs: Any) -> Engine:
    """Create the engine for ``settings.database_url`` (or ``url``) with its timeouts.

    SQLite files get their parent directory created, foreign keys and WAL; PostgreSQL gets a
    connect timeout and a statement timeout.
    """
    parsed = make_url(url or settings.database_url)
    if parsed.drivername == "postgresql":
        # The declared driver is psycopg2 (SQLAlchemy 2.1 would pick psycopg 3).
        parsed = parsed.set(drivername="postgresql+psycopg2")
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        connect_args["timeout"] = settings.database_connect_timeout_s
    else:
        connect_args["connect_timeout"] = settings.database_connect_timeout_s
        connect_args["options"] = f"-c statement_timeout={settings.database_statement_timeout_ms}"
        kwargs.setdefault("pool_pre_ping", True)
    engine = create_engine(parsed, connect_args=connect_args, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def build_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded values after commit (tasks return plain data)."""
    return sessionmaker(engine, expire_on_commit=False)
