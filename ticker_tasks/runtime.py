"""Per-process resources, built in one place and passed explicitly.

A Celery pool child builds its :class:`Runtime` at ``worker_process_init`` (see
:mod:`ticker_tasks.app`); the streamer and the CLI build theirs at start-up; tests build their
own. Nothing here opens a connection at import.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from ticker_tasks.db.engine import build_engine, build_sessionmaker
from ticker_tasks.kite.rest import KiteClients
from ticker_tasks.settings import Settings


def build_redis(settings: Settings, *, url: str | None = None) -> redis.Redis:
    """A Redis client with the configured timeouts (connects lazily, on first command)."""
    return redis.Redis.from_url(
        url or settings.redis_url,
        socket_timeout=settings.redis_socket_timeout_s,
        socket_connect_timeout=settings.redis_socket_timeout_s,
        health_check_interval=30,
    )


@dataclass(frozen=True)
class Runtime:
    """What a process needs to do its work: settings, database, Redis and Kite clients."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    redis: redis.Redis
    kite_clients: KiteClients

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        """Build every resource of one process from ``settings``."""
        engine = build_engine(settings)
        redis_client = build_redis(settings)
        return cls(
            settings=settings,
            engine=engine,
            sessions=build_sessionmaker(engine),
            redis=redis_client,
            kite_clients=KiteClients(settings, redis_client),
        )

    def close(self) -> None:
        """Release connections; the process may build a new runtime afterwards."""
        self.kite_clients.close()
        self.redis.close()
        self.engine.dispose()
