"""The one way a periodic task runs: guarded against doubles, retried on transient errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ticker_tasks.errors import RetryableError
from ticker_tasks.locks import periodic_run
from ticker_tasks.tasks.base import BaseTask
from ticker_tasks.tasks.retry import retry


def run_periodic(
    task: BaseTask, name: str, *, period_s: float, job: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Run ``job`` unless the same job runs elsewhere or its schedule slot already ran.

    Returns ``{"skipped": reason}`` for a skipped run; a retryable error schedules a retry of
    ``task`` through the one retry policy.
    """
    runtime = task.runtime
    with periodic_run(
        runtime.redis, name, period_s=period_s, lock_ttl_s=runtime.settings.task_time_limit_s
    ) as run:
        if not run.allowed:
            return {"skipped": run.reason}
        try:
            return job()
        except RetryableError as exc:
            raise retry(task, exc) from exc
