"""The processes and scratch resources of ``ticker-tasks bench pipeline``.

Everything here is started by the bench and stopped by it, whatever happens (context
managers, SIGTERM then SIGKILL after a timeout):

* :func:`scratch_redis_db` claims a free database index on the configured Redis server (the
  claim key :data:`CLAIM_KEY` in database 0 is the one test runs use, so a bench and a test
  run never share a database), flushes it before and after (the default is a private
  ``redis-server``: :func:`ticker_tasks.processes.private_redis`);
* :func:`simulator` runs ``python -m ticker_tasks.simulator`` on free ports;
* :func:`tick_workers` runs ``celery worker -Q ticks`` processes;
* :func:`start_streamer` runs ``python -m workers.streamer`` (stopped by the bench itself);
* :class:`CpuMeter` reads the CPU seconds of those process trees with psutil.

Every child runs in its own session, so a Ctrl-C reaches the bench only and the bench stops
its children in order.
"""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import psutil
import redis
from celery import Celery

from ticker_tasks.errors import ConfigError, ServiceUnavailable
from ticker_tasks.processes import (
    START_TIMEOUT_S,
    log_tail,
    stop_process,
)
from ticker_tasks.queues import TICKS

ROOT: Final = Path(__file__).resolve().parents[2]
#: Claim of a Redis database index, in database 0 (shared with the test runs).
CLAIM_KEY: Final = "ticker_tasks:db-claim:{index}"
CLAIM_TTL_S: Final = 4 * 3600


def _with_db(url: str, index: int) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigError(f"bench pipeline needs a redis:// URL, got scheme {parts.scheme!r}")
    return urlunsplit((parts.scheme, parts.netloc, f"/{index}", parts.query, ""))


def _claim(control: redis.Redis, index: int, token: str) -> bool:
    return bool(control.set(CLAIM_KEY.format(index=index), token, nx=True, ex=CLAIM_TTL_S))


@contextmanager
def scratch_redis_db(base_url: str, index: int | None = None) -> Iterator[str]:
    """Claim a Redis database on the server of ``base_url`` and yield its URL.

    Args:
        base_url: Any URL of the server (its database index is ignored).
        index: The database to use; default: the first free one of 15..1 (claimed, empty).

    Raises:
        ConfigError: ``index`` is 0 (it holds the claims) or claimed by someone else, or no
            database is free.
    """
    if index is not None and not 1 <= index <= 15:
        raise ConfigError("the bench's Redis database must be 1..15 (0 holds the claims)")
    control = redis.Redis.from_url(_with_db(base_url, 0), socket_timeout=5)
    token = uuid.uuid4().hex
    chosen: int | None = None
    try:
        candidates = [index] if index is not None else list(range(15, 0, -1))
        for candidate in candidates:
            scratch = redis.Redis.from_url(_with_db(base_url, candidate), socket_timeout=5)
            try:
                if index is None and scratch.dbsize():
                    continue
                if _claim(control, candidate, token):
                    chosen = candidate
                    scratch.flushdb()
                    break
            finally:
                scratch.close()
        if chosen is None:
            raise ConfigError(
                f"Redis database {index} is claimed by another run"
                if index is not None
                else "no free Redis database (1-15) for the bench: pass --redis-db"
            )
        yield _with_db(base_url, chosen)
    finally:
        if chosen is not None:
            scratch = redis.Redis.from_url(_with_db(base_url, chosen), socket_timeout=5)
            scratch.flushdb()
            scratch.close()
            if control.get(CLAIM_KEY.format(index=chosen)) == token.encode():
                control.delete(CLAIM_KEY.format(index=chosen))
        control.close()


def claim_held(base_url: str, url: str) -> bool:
    """Whether the bench's claim on the database of ``url`` is still in place."""
    index = int(urlsplit(url).path.strip("/") or 0)
    control = redis.Redis.from_url(_with_db(base_url, 0), socket_timeout=5)
    try:
        return control.exists(CLAIM_KEY.format(index=index)) == 1
    finally:
        control.close()


def _popen(argv: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as output:
        return subprocess.Popen(
            argv,
            cwd=ROOT,
            env=dict(env),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@dataclass(frozen=True)
class SimulatorProcess:
    """A running simulator: its process and URLs."""

    process: subprocess.Popen[bytes]
    rest_url: str
    ws_url: str


@contextmanager
def simulator(
    accounts: list[tuple[str, str]], flags: list[str], log: Path
) -> Iterator[SimulatorProcess]:
    """Run the Kite simulator on free ports with ``accounts`` (api_key, access_token)."""
    argv = [sys.executable, "-m", "ticker_tasks.simulator", "--rest-port", "0", "--ws-port", "0"]
    for api_key, access_token in accounts:
        argv += ["--account", f"{api_key}:{access_token}"]
    argv += ["--log-level", "WARNING", *flags]
    with open(log, "ab") as errors:
        process = subprocess.Popen(
            argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=errors, start_new_session=True
        )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT_S)
        line = process.stdout.readline() if ready else b""
        if not line:
            raise ServiceUnavailable(f"the simulator did not start:\n{log_tail(log)}")
        urls = json.loads(line)
        yield SimulatorProcess(process, str(urls["rest_url"]), str(urls["ws_url"]))
    finally:
        stop_process(process)
        if process.stdout is not None:
            process.stdout.close()


def _producer(redis_url: str) -> Celery:
    app = Celery("ticker_tasks-bench-pipeline")
    app.config_from_object("celeryconfig")
    app.conf.broker_url = redis_url
    app.conf.result_backend = redis_url
    return app


def _wait_for_workers(redis_url: str, names: list[str]) -> None:
    app = _producer(redis_url)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        waiting = set(names)
        while waiting:
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"tick workers did not answer in time: {sorted(waiting)}")
            for reply in app.control.ping(destination=sorted(waiting), timeout=1.0):
                waiting -= set(reply)
    finally:
        app.close()


@contextmanager
def tick_workers(
    env: Mapping[str, str], *, count: int, concurrency: int, prefetch: int, folder: Path
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Run ``count`` Celery workers of the ``ticks`` queue and wait until they answer."""
    processes: list[subprocess.Popen[bytes]] = []
    names = [f"bench-ticks-{i}-{uuid.uuid4().hex[:6]}@localhost" for i in range(count)]
    try:
        for i, name in enumerate(names):
            argv = [sys.executable, "-m", "celery", "-A", "ticker_tasks.app", "worker"]
            argv += ["-Q", TICKS, "-c", str(concurrency), "-P", "prefork", "-n", name]
            argv += ["--prefetch-multiplier", str(prefetch), "-l", "WARNING"]
            argv += ["--without-gossip", "--without-mingle"]
            processes.append(_popen(argv, env, folder / f"worker-{i}.log"))
        _wait_for_workers(env["TICKER_REDIS_URL"], names)
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            stop_process(process)


def start_streamer(env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m workers.streamer``; the caller stops it (:func:`stop_process`)."""
    return _popen([sys.executable, "-m", "workers.streamer"], env, log)


def _tree_cpu_s(process: psutil.Process) -> float:
    """CPU seconds of a process, of its live descendants and of the children it reaped."""
    with process.oneshot():
        times = process.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        children = process.children(recursive=True)
    for child in children:
        try:
            child_times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += child_times.user + child_times.system
    return float(total)


@dataclass
class CpuMeter:
    """CPU seconds of named process trees, sampled on demand.

    A process that has exited keeps its last sample, so sample often (the bench samples
    about every 0.2 s).
    """

    pids: dict[str, list[int]]
    last: dict[str, float] = field(default_factory=dict)
    _processes: dict[str, list[psutil.Process]] = field(default_factory=dict)
    _seen: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, pids in self.pids.items():
            found = []
            for pid in pids:
                try:
                    found.append(psutil.Process(pid))
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            self._processes[name] = found

    def sample(self) -> dict[str, float]:
        """Current CPU seconds per name (the last sample for exited processes)."""
        for name, processes in self._processes.items():
            for process in processes:
                try:
                    self._seen[process.pid] = _tree_cpu_s(process)
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
            self.last[name] = sum(self._seen.get(p.pid, 0.0) for p in processes)
        return dict(self.last)


def redis_server_pid(client: redis.Redis, url: str) -> int | None:
    """The pid of the Redis server when it runs on this machine and is visible, else None."""
    if urlsplit(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    info = client.info("server")
    pid = int(info.get("process_id", 0))
    try:
        psutil.Process(pid).cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None
    return pid
