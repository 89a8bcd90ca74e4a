"""Candle maintenance beat tasks: completeness of stream bars, retention purge.

``ticker_tasks.candles.check_completeness`` runs on the ``backfill`` queue (it spends the
historical request budget, like backfill chunks); ``ticker_tasks.candles.purge`` on
``maintenance``. Both are internal (beat only) and go through :func:`run_periodic`: an
overlapping run or a second send of the same schedule slot is skipped.
"""

from __future__ import annotations

import itertools
from typing import Any

from celery.schedules import crontab

from ticker_tasks.app import app
from ticker_tasks.bars.completeness import check_completeness
from ticker_tasks.bars.retention import purge_candles
from ticker_tasks.queues import BACKFILL, MAINTENANCE
from ticker_tasks.tasks.base import BaseTask
from ticker_tasks.tasks.periodic import run_periodic

_WEEK_MINUTES = 7 * 24 * 60


def cron_period_s(expression: str) -> float:
    """The slot length of a cron schedule: the shortest gap between two fire times, seconds.

    Taken over a week from the minute, hour and day-of-week fields (day-of-month and month
    only make fire times rarer, so the figure is a lower bound: budgets derived from it are
    conservative). A schedule firing once a week has a period of one week.
    """
    schedule = crontab.from_string(expression)
    fires: list[int] = sorted(
        int(day) * 1440 + int(hour) * 60 + int(minute)
        for day in schedule.day_of_week
        for hour in schedule.hour
        for minute in schedule.minute
    )
    gaps = [b - a for a, b in itertools.pairwise(fires)]
    gaps.append(fires[0] + _WEEK_MINUTES - fires[-1])
    return 60.0 * min(gaps)


@app.task(
    name="ticker_tasks.candles.check_completeness",
    bind=True,
    queue=BACKFILL,
    ignore_result=False,
    acks_late=True,
    reject_on_worker_lost=True,
)
def check_completeness_task(self: BaseTask) -> dict[str, Any]:
    """Verify stream bars of the latest session against Kite within the request budget.

    Returns the :class:`~ticker_tasks.bars.completeness.CompletenessSummary` as a dict, or
    ``{"skipped": reason}`` when the slot ran already or a run is in progress.
    """
    runtime = self.runtime
    period_s = cron_period_s(runtime.settings.schedule_candles_completeness)
    return run_periodic(
        self,
        "candles.check_completeness",
        period_s=period_s,
        job=lambda: check_completeness(runtime, period_s=period_s).as_dict(),
    )


@app.task(
    name="ticker_tasks.candles.purge",
    bind=True,
    queue=MAINTENANCE,
    ignore_result=False,
    acks_late=True,
    reject_on_worker_lost=True,
)
def purge(self: BaseTask) -> dict[str, Any]:
    """Delete candles beyond ``candle_retention_days`` in chunks; trim fetched ranges."""
    runtime = self.runtime
    return run_periodic(
        self,
        "candles.purge",
        period_s=cron_period_s(runtime.settings.schedule_candles_purge),
        job=lambda: purge_candles(runtime).as_dict(),
    )
