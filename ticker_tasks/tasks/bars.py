"""Bar closing task (queue ``ticks``): ``ticker_tasks.bars.close``, run by beat.

Runs every ``TICKER_BARS_CLOSE_INTERVAL_S`` on the tick pool (bars are part of the tick
pipeline; one run is a few Redis round trips and one bulk upsert). A run that overlaps a
running one, or repeats its schedule slot, is skipped.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from ticker_tasks.app import app
from ticker_tasks.bars.close import BarCloser
from ticker_tasks.market.registry import RegistryCache
from ticker_tasks.queues import TICKS
from ticker_tasks.runtime import Runtime
from ticker_tasks.tasks.base import BaseTask
from ticker_tasks.tasks.periodic import run_periodic

CLOSE_BARS = "ticker_tasks.bars.close"


def _closer(runtime: Runtime) -> BarCloser:
    settings = runtime.settings
    return BarCloser(
        runtime.redis,
        runtime.sessions,
        RegistryCache(runtime.redis, check_interval_s=settings.registry_check_interval_s),
        grace_s=settings.bars_close_grace_s,
        max_bars=settings.bars_close_max,
        ttl_s=settings.bars_redis_ttl_s,
        stream_maxlen=settings.bars_stream_maxlen,
    )


@app.task(
    name=CLOSE_BARS,
    bind=True,
    queue=TICKS,
    acks_late=True,
    reject_on_worker_lost=True,
)
def close_bars(self: BaseTask) -> dict[str, Any]:
    """Close the changed bars of finished minutes into ``candles`` and publish them."""
    runtime = self.runtime
    closer = self.per_runtime("bar_closer", _closer)
    return run_periodic(
        self,
        "bars.close",
        period_s=runtime.settings.bars_close_interval_s,
        job=lambda: asdict(closer.run(time.time())),
    )
