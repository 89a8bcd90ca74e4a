"""Migrations run up and down on PostgreSQL and SQLite, and match the models."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect

from alembic import command
from tests.support.services import postgres_for_tests
from ticker_tasks.db import models  # noqa: F401
from ticker_tasks.db.base import Base
from ticker_tasks.db.engine import build_engine

ROOT = Path(__file__).resolve().parents[2]
TABLES = {
    "instruments",
    "accounts",
    "subscriptions",
    "orders",
    "order_events",
    "candles",
    "backfill_jobs",
    "fetched_ranges",
}


def _config(engine: Engine) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["skip_logging"] = True
    config.attributes["url"] = engine.url.render_as_string(hide_password=False)
    return config


@pytest.fixture(params=["postgresql", "sqlite"])
def engine(request, settings, tmp_path):
    # A database of its own: these tests downgrade to base, which must not touch the
    # session's shared migrated database.
    service = postgres_for_tests() if request.param == "postgresql" else None
    url = service.url if service else f"sqlite:///{tmp_path / 'm.db'}"
    engine = build_engine(settings, url=url)
    yield engine
    engine.dispose()
    if service:
        service.close()


def _with_connection(engine: Engine, connection) -> Config:
    config = _config(engine)
    config.attributes["connection"] = connection
    return config


def test_single_head():
    script = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini")))
    assert len(script.get_heads()) == 1


def test_upgrade_creates_every_table_and_downgrade_removes_them(engine):
    with engine.begin() as connection:
        command.upgrade(_with_connection(engine, connection), "head")
    assert set(inspect(engine).get_table_names()) >= TABLES

    with engine.begin() as connection:
        command.downgrade(_with_connection(engine, connection), "base")
    assert not TABLES & set(inspect(engine).get_table_names())


def test_models_match_migrations(engine):
    # Given a database at head
    with engine.begin() as connection:
        command.upgrade(_with_connection(engine, connection), "head")
    # When autogenerate compares it with the models
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        diff = compare_metadata(context, Base.metadata)
    # I expect nothing to migrate
    assert diff == []


def test_instrument_identity_survives_token_reuse(engine):
    """Two contracts may hold the same token over time; the natural key stays unique."""
    import datetime as dt
    from decimal import Decimal

    from sqlalchemy.exc import IntegrityError
    from sqlalchemy.orm import Session

    from ticker_tasks.db.models import Instrument

    with engine.begin() as connection:
        command.upgrade(_with_connection(engine, connection), "head")
    common = {
        "exchange": "NFO",
        "segment": "NFO-OPT",
        "instrument_type": "CE",
        "tick_size": Decimal("0.05"),
        "lot_size": 75,
        "instrument_token": 12073986,
        "exchange_token": 47164,
    }
    with Session(engine) as session:
        session.add(
            Instrument(tradingsymbol="NIFTY24JAN21000CE", expiry=dt.date(2024, 1, 25), **common)
        )
        session.add(
            Instrument(tradingsymbol="NIFTY25JAN21000CE", expiry=dt.date(2025, 1, 30), **common)
        )
        session.commit()
        session.add(
            Instrument(tradingsymbol="NIFTY24JAN21000CE", expiry=dt.date(2024, 1, 25), **common)
        )
        with pytest.raises(IntegrityError):
            session.commit()
