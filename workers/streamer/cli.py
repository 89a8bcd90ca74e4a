"""Entry point of the streamer process: ``ticker-tasks streamer`` / ``python -m workers.streamer``.

Builds the process's resources in one place (Redis clients, database sessions, the Celery app
used only to send by task name), runs :class:`~workers.streamer.service.StreamerService` on a
fresh event loop and returns its exit status (0 after a graceful SIGTERM/SIGINT stop).

For operators: ``kill -USR1 PID`` writes the stack of every thread to stderr (faulthandler).
A process still running :data:`EXIT_GRACE_S` after the end of its shutdown budget
(``streamer_shutdown_timeout_s``) writes its thread and task stacks to stderr and exits with
status :data:`EXIT_STUCK` (:class:`ExitWatchdog`): every wait of the stop is bounded, but not
what the interpreter waits for at exit (threads, the default executor).
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import os
import signal
import sys
import threading
from typing import Final

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ticker_tasks.db.engine import build_engine, build_sessionmaker
from ticker_tasks.leases import default_owner_id
from ticker_tasks.runtime import build_redis
from ticker_tasks.settings import Settings
from workers.streamer.tasks import cancel_and_wait

log = logging.getLogger(__name__)

#: Seconds past ``streamer_shutdown_timeout_s`` after which a stopping process is ended.
EXIT_GRACE_S: Final = 15.0
#: Exit status of a process ended by the :class:`ExitWatchdog` (EX_SOFTWARE).
EXIT_STUCK: Final = 70
#: Bound of the teardown after the service returned (leftover tasks, Redis client).
TEARDOWN_S: Final = 5.0


class ExitWatchdog:
    """Ends the process ``after_s`` after :meth:`arm` unless it exited (a daemon timer)."""

    def __init__(self, after_s: float) -> None:
        self.after_s = after_s
        self._timer: threading.Timer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def arm(self) -> None:
        """Start the countdown (once); call it from the event loop."""
        if self._timer is not None:
            return
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()
        self._timer = threading.Timer(self.after_s, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        sys.stderr.write(
            f"streamer: still running {self.after_s:.0f} s after the stop request; "
            f"exiting with status {EXIT_STUCK}. Thread stacks:\n"
        )
        sys.stderr.flush()
        faulthandler.dump_traceback(all_threads=True)
        if self._loop is not None:
            try:  # best effort: the loop's thread may be running them right now
                for task in asyncio.all_tasks(self._loop):
                    task.print_stack(limit=20, file=sys.stderr)
            except Exception as exc:  # noqa: BLE001  (a diagnostic must not keep us alive)
                sys.stderr.write(f"(tasks not dumped: {exc!r})\n")
        sys.stderr.flush()
        os._exit(EXIT_STUCK)


async def _main(settings: Settings, watchdog: ExitWatchdog) -> int:
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
            on_stop=watchdog.arm,
        )
        return await service.run()
    finally:
        # asyncio.run cancels what is left once and waits for it without a bound: end it here.
        await cancel_and_wait(asyncio.all_tasks() - {asyncio.current_task()}, TEARDOWN_S)
        with contextlib.suppress(RedisError, OSError):  # TimeoutError is an OSError
            async with asyncio.timeout(TEARDOWN_S):
                await redis_async.aclose()
        redis_sync.close()
        engine.dispose()


def streamer_command(settings: Settings) -> int:
    """Run the streamer until SIGTERM/SIGINT; the process exit status."""
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    watchdog = ExitWatchdog(settings.streamer_shutdown_timeout_s + EXIT_GRACE_S)
    return asyncio.run(_main(settings, watchdog))
