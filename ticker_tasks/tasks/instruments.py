"""Reference-data tasks (queue ``maintenance``)."""

from __future__ import annotations

from typing import Any

from ticker_tasks.app import app
from ticker_tasks.errors import RetryableError
from ticker_tasks.locks import periodic_run
from ticker_tasks.market.jobs import check_tokens, refresh_instruments
from ticker_tasks.tasks.base import BaseTask
from ticker_tasks.tasks.retry import retry

DAY_S = 86_400.0


@app.task(
    name="ticker_tasks.instruments.refresh",
    bind=True,
    ignore_result=False,
    acks_late=True,
    reject_on_worker_lost=True,
)
def refresh(self: BaseTask, force: bool = False, account_id: str | None = None) -> dict[str, Any]:
    """Refresh the instrument master (daily from beat; ``force`` for an on-demand run)."""
    runtime = self.runtime
    period = 1.0 if force else DAY_S
    with periodic_run(
        runtime.redis,
        "instruments.refresh",
        period_s=period,
        lock_ttl_s=runtime.settings.task_time_limit_s,
    ) as run:
        if not run.allowed:
            return {"skipped": run.reason}
        try:
            return refresh_instruments(runtime, account_id=account_id).as_dict()
        except RetryableError as exc:
            raise retry(self, exc) from exc


@app.task(
    name="ticker_tasks.maintenance.check_tokens",
    bind=True,
    ignore_result=False,
    acks_late=True,
    reject_on_worker_lost=True,
)
def check_account_tokens(self: BaseTask) -> dict[str, Any]:
    """Validate every enabled account's Kite token (daily before the pre-open)."""
    runtime = self.runtime
    with periodic_run(
        runtime.redis,
        "maintenance.check_tokens",
        period_s=3600.0,
        lock_ttl_s=runtime.settings.task_time_limit_s,
    ) as run:
        if not run.allowed:
            return {"skipped": run.reason}
        return {"accounts": [result.as_dict() for result in check_tokens(runtime)]}
