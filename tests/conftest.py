"""Session-wide services: every test run gets its own Redis database and PostgreSQL database."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine

from tests.support.services import Service, postgres_for_tests, redis_for_tests
from ticker_tasks.settings import Settings, load_settings

os.environ.setdefault("TZ", "Asia/Kolkata")


@pytest.fixture(scope="session", autouse=True)
def redis_service() -> Iterator[Service]:
    """The Redis of this run; its URL is exported as TICKER_REDIS_URL for every process."""
    service = redis_for_tests()
    previous = {key: os.environ.get(key) for key in ("TICKER_REDIS_URL", "TICKER_DATABASE_URL")}
    os.environ["TICKER_REDIS_URL"] = service.url
    scratch = tempfile.mkdtemp(prefix="ticker-tests-")
    os.environ["TICKER_DATABASE_URL"] = f"sqlite:///{Path(scratch) / 'ticker.db'}"
    yield service
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    service.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a PostgreSQL database created for this run (dropped at the end)."""
    service = postgres_for_tests()
    yield service.url
    service.close()


@pytest.fixture
def settings() -> Settings:
    """Settings as the processes of this test run see them."""
    return load_settings()


@pytest.fixture
def redis_client(redis_service: Service) -> Iterator[redis.Redis]:
    """A client on this run's Redis database."""
    client = redis.Redis.from_url(redis_service.url, socket_timeout=5)
    yield client
    client.close()


@pytest.fixture(scope="session")
def migrated_postgres_url(postgres_url: str) -> str:
    """This run's PostgreSQL database, migrated to head."""
    from alembic.config import Config

    from alembic import command

    config = Config(str(Path(__file__).resolve().parents[1] / "alembic.ini"))
    config.attributes["skip_logging"] = True
    config.attributes["url"] = postgres_url
    command.upgrade(config, "head")
    return postgres_url


@pytest.fixture
def db_engine(migrated_postgres_url: str) -> Iterator[Engine]:
    """An engine on the migrated database; every table is emptied after the test."""
    from tests.support.db import truncate_all
    from ticker_tasks.db.engine import build_engine

    engine = build_engine(load_settings(), url=migrated_postgres_url)
    yield engine
    truncate_all(engine)
    engine.dispose()
