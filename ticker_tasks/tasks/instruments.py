"""Reference-data tasks (queue ``maintenance``)."""

from __future__ import annotations

from typing import Any

from ticker_tasks.app import app
from ticker_tasks.market.jobs import check_tokens, refresh_instruments
from ticker_tasks.tasks.base import BaseTask
from ticker_tasks.tasks.periodic import run_periodic

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
    return run_periodic(
        self,
        "instruments.refresh",
        period_s=1.0 if force else DAY_S,
        job=lambda: refresh_instruments(self.runtime, account_id=account_id).as_dict(),
    )


@app.task(
    name="ticker_tasks.maintenance.check_tokens",
    bind=True,
    ignore_result=False,
    acks_late=True,
    reject_on_worker_lost=True,
)
def check_account_tokens(self: BaseTask) -> dict[str, Any]:
    """Validate every enabled account's Kite token (daily before the pre-open)."""
    return run_periodic(
        self,
        "maintenance.check_tokens",
        period_s=3600.0,
        job=lambda: {"accounts": [r.as_dict() for r in check_tokens(self.runtime)]},
    )
