"""Maintenance tasks (queue ``maintenance``)."""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import text

from ticker_tasks.app import app
from ticker_tasks.tasks.base import BaseTask


@app.task(
    name="ticker_tasks.maintenance.ping",
    bind=True,
    ignore_result=False,
    acks_late=True,
    reject_on_worker_lost=True,
)
def ping(self: BaseTask, echo: str = "") -> dict[str, Any]:
    """Round trip through a worker: touches the database and Redis, returns ``echo``."""
    runtime = self.runtime
    with runtime.engine.connect() as connection:
        database_ok = connection.execute(text("SELECT 1")).scalar_one() == 1
    redis_ok = bool(runtime.redis.ping())
    return {
        "echo": echo,
        "worker_pid": os.getpid(),
        "database": database_ok,
        "redis": redis_ok,
    }
