"""Entry point of the streamer process: ``ticker-tasks streamer`` / ``python -m workers.streamer``.

Builds the process's resources in one place (Redis clients, database sessions, the Celery app
used only to send by task name), runs :class:`~workers.streamer.service.StreamerService` on a
fresh event loop and returns its exit status (0 after a graceful SIGTERM/SIGINT stop).
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis

from ticker_tasks.db.engine import build_engine, build_sessionmaker
from ticker_tasks.leases import default_owner_id
from ticker_tasks.runtime import build_redis
from ticker_tasks.settings import Settings


async def _main(settings: Settings) -> int:
    from ticker_tasks.app import app  # the Celery app: sends by task name, imports no task
    from workers.streamer.service import StreamerService

    engine = build_engine(settings)
    redis_async = aioredis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_socket_timeout_s,
        socket_connect_timeout=settings.redis_socket_timeout_s,
    )
    redis_sync = build_redis(settings)
    try:
        service = StreamerService(
            settings,
            app=app,
            redis_async=redis_async,
            redis_sync=redis_sync,
            sessions=build_sessionmaker(engine),
            owner_id=default_owner_id(),
        )
        return await service.run()
    finally:
        await redis_async.aclose()
        redis_sync.close()
        engine.dispose()


def streamer_command(settings: Settings) -> int:
    """Run the streamer until SIGTERM/SIGINT; the process exit status."""
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return asyncio.run(_main(settings))
