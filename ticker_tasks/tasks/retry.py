"""The one retry policy of every task.

Retryable errors (:class:`~ticker_tasks.errors.RetryableError`) are retried with exponential
backoff and full jitter, capped at ``retry_backoff_max_s`` (below the broker's visibility
timeout, so a waiting retry is never redelivered twice). A rate-limit or circuit-breaker error
says when to come back (``retry_after``) and that wins. Permanent and ambiguous errors are
never retried here: ambiguous ones need reconciliation first.
"""

from __future__ import annotations

import random

from celery import Task
from celery.exceptions import Retry

from ticker_tasks.errors import CircuitOpen, RateLimited, RetryableError


def backoff_s(retries: int, *, cap_s: float, base_s: float = 1.0) -> float:
    """Seconds to wait before retry number ``retries + 1`` (full jitter, capped)."""
    ceiling = min(cap_s, base_s * (2**retries))
    return random.uniform(ceiling / 2, ceiling)


def countdown_for(exc: RetryableError, retries: int, *, cap_s: float) -> float:
    """When to retry after ``exc``: the error's own hint, else the backoff."""
    if isinstance(exc, RateLimited | CircuitOpen):
        return min(cap_s, max(0.05, exc.retry_after))
    return backoff_s(retries, cap_s=cap_s)


def retry(task: Task, exc: RetryableError, *, max_retries: int = 8) -> Retry:
    """Schedule a retry of ``task`` (raise the returned value); the original error is kept."""
    cap = float(task.app.runtime.settings.retry_backoff_max_s)
    countdown = countdown_for(exc, int(task.request.retries), cap_s=cap)
    result: Retry = task.retry(exc=exc, countdown=countdown, max_retries=max_retries)
    return result
