"""Real Celery workers in subprocesses, consuming from the real broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from celery import Celery

ROOT = Path(__file__).resolve().parents[2]


def producer_app(broker_url: str | None = None) -> Celery:
    """A Celery app configured like the service's (optionally on another broker)."""
    app = Celery("ticker_tasks-test-producer")
    app.config_from_object("celeryconfig")
    if broker_url is not None:
        app.conf.broker_url = broker_url
        app.conf.broker_transport_options = {}
    return app


def purge_queues(queues: list[str], broker_url: str | None = None) -> None:
    """Drop every message waiting in ``queues`` on the broker."""
    app = producer_app(broker_url)
    with app.connection_for_write() as connection:
        for queue in app.conf.task_queues:
            if queue.name in queues:
                bound = queue(connection.default_channel)
                bound.declare()
                bound.purge()


@contextmanager
def celery_worker(
    queues: list[str],
    *,
    env: Mapping[str, str],
    concurrency: int = 2,
    log_path: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``celery worker`` for ``queues`` with ``env`` until the block exits.

    The queues are purged first: a module must not inherit another module's backlog.
    """
    purge_queues(queues, env.get("TICKER_BROKER_URL"))
    name = f"test-{uuid.uuid4().hex[:8]}@%h"
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "ticker_tasks.app",
        "worker",
        "-Q",
        ",".join(queues),
        "-c",
        str(concurrency),
        "-P",
        "prefork",
        "-n",
        name,
        "--without-gossip",
        "--without-mingle",
        "-l",
        "WARNING",
    ]
    output = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        if log_path:
            output.close()  # type: ignore[union-attr]
