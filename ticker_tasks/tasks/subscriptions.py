"""Subscription maintenance tasks (queue ``maintenance``)."""

from __future__ import annotations

from typing import Any

from ticker_tasks.app import app
from ticker_tasks.queues import MAINTENANCE
from ticker_tasks.subscriptions.recentre import recentre_subscriptions
from ticker_tasks.tasks.base import BaseTask
from ticker_tasks.tasks.periodic import run_periodic

#: The beat period of the re-centre job (every minute of the session).
RECENTRE_PERIOD_S = 60.0


@app.task(
    name="ticker_tasks.subscriptions.recentre",
    bind=True,
    queue=MAINTENANCE,
    ignore_result=False,
    acks_late=True,
    reject_on_worker_lost=True,
)
def recentre(self: BaseTask) -> dict[str, Any]:
    """Re-centre chain subscriptions on the underlyings' prices and roll expired chains.

    One Kite ``ltp`` request per run; streamers are notified only when the desired token set
    changed. A second run in the same minute (or one overlapping a running one) is skipped.
    """
    return run_periodic(
        self,
        "subscriptions.recentre",
        period_s=RECENTRE_PERIOD_S,
        job=lambda: recentre_subscriptions(self.runtime).as_dict(),
    )
