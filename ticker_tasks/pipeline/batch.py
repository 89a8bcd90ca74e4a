"""One tick batch through the pipeline: validate, report rejections, merge state, publish, bars.

:class:`TickPipeline` holds the per-process pieces (registry cache, calendar, publisher) and is
built once per process from Settings and a Redis client; ``ticker_tasks.ticks.process_batch``
calls :meth:`TickPipeline.run` with the decoded rows.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import redis

from ticker_tasks.bars.aggregate import aggregate
from ticker_tasks.bars.live import BarMerger
from ticker_tasks.errors import NotFound
from ticker_tasks.market.calendar import TradingCalendar
from ticker_tasks.market.registry import RegistryCache
from ticker_tasks.pipeline.columns import Rows
from ticker_tasks.pipeline.publish import Publisher
from ticker_tasks.pipeline.state import order_key_array
from ticker_tasks.pipeline.validate import (
    BatchRef,
    FloatArray,
    KnownTokens,
    Limits,
    calendar_session,
    report_rejections,
    validate,
)
from ticker_tasks.settings import Settings


@dataclass(frozen=True)
class PipelineOutcome:
    """What the pipeline did with one delivery of a batch.

    Attributes:
        good: Rows that passed validation.
        rejected: Rejected rows per reason.
        published: False when the batch had been published already (or had no good rows).
        applied: Rows that replaced an instrument's state.
        bars_changed: Open 1-minute bars this delivery changed (0 for a redelivery).
    """

    good: int
    rejected: dict[str, int] = field(default_factory=dict)
    published: bool = False
    applied: int = 0
    bars_changed: int = 0


class TickPipeline:
    """Per-process tick pipeline (registry cache, calendar, publisher, limits)."""

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        *,
        calendar: TradingCalendar | None = None,
    ) -> None:
        self._client = client
        self._settings = settings
        self._registry = RegistryCache(client, check_interval_s=settings.registry_check_interval_s)
        if calendar is None:
            year = dt.datetime.now(tz=dt.UTC).year
            calendar = TradingCalendar(year - 1, year + 1)
        self._in_session = calendar_session(calendar)
        self._publisher = Publisher(
            client,
            stream_maxlen=settings.ticks_stream_maxlen,
            dedup_window=settings.ticks_dedup_window,
        )
        self._bars = BarMerger(client, ttl_s=settings.bars_redis_ttl_s)
        self._limits = Limits(
            price_tolerance=settings.ticks_price_tolerance,
            clock_skew_s=settings.ticks_clock_skew_s,
            max_age_s=settings.ticks_max_age_s,
        )

    def _known_tokens(self) -> KnownTokens | None:
        try:
            return self._registry.current().known_tokens
        except NotFound:
            return None

    def run(
        self,
        batch: BatchRef,
        rows: Rows,
        received_at: FloatArray,
        *,
        now: float,
        report: bool = True,
    ) -> PipelineOutcome:
        """Validate ``rows``, count and sample the rejected ones, merge and publish the rest,
        and merge them into the open 1-minute bars.

        The bar merge is idempotent and runs on every delivery, so a delivery that published
        but died before merging its bars completes them when it is redelivered.

        Args:
            batch: Identity of the batch.
            rows: Decoded rows.
            received_at: Receive time of each row's frame.
            now: Current time, epoch seconds.
            report: Count and sample the rejections (False for a delivery already counted,
                so a redelivered batch does not count its bad rows twice).

        Raises:
            redis.RedisError: Redis is unreachable.
        """
        received_at = np.asarray(received_at, dtype=np.float64)
        checked = validate(
            rows,
            received_at,
            source=batch.source,
            known_tokens=self._known_tokens(),
            in_session=self._in_session,
            now=now,
            limits=self._limits,
        )
        if report:
            report_rejections(
                self._client,
                batch,
                rows,
                received_at,
                checked,
                sample=self._settings.ticks_dead_letter_sample,
                maxlen=self._settings.ticks_dead_letter_maxlen,
            )
        good_received = received_at[checked.good_index]
        keys = order_key_array(
            checked.good,
            good_received,
            checked.good_index,
            connection=batch.connection,
            seq=batch.seq,
        )
        published = self._publisher.publish(
            batch, checked.good, good_received, checked.good_index, keys
        )
        partial = aggregate(checked.good, good_received, checked.good_index, keys)
        return PipelineOutcome(
            good=int(checked.good.size),
            rejected=checked.counts,
            published=published.new,
            applied=published.applied,
            bars_changed=self._bars.merge(partial, source=batch.source),
        )
