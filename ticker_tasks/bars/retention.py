"""Candle retention: delete candles older than their interval's retention, in small chunks.

``candle_retention_days`` maps a base interval (``minute``, ``5minute``, ...) to days kept;
a stored ``candles.interval`` with a suffix (``day+c``, a continuous series) follows its base
interval; an interval not in the mapping is kept forever. The cutoff is midnight IST of the
day ``days`` before today, so whole days go at once.

Order of work in one run (:func:`purge_candles`):

1. **Fetched ranges first.** Backfill's gap detection trusts ``fetched_ranges``: a range that
   still covered purged candles would make a later backfill skip them. So for every key of a
   retained interval (``<base>``, ``<base>+c`` and their ``+oi`` variants) ranges ending at or
   before the cutoff are deleted and ranges straddling it start at the cutoff from now on. Done
   before the candles, so a crash in between only makes a backfill fetch again; done once more
   at the end for ranges a backfill recorded meanwhile.
2. **Candles, chunk by chunk.** For every series key, the instruments holding candles older
   than the cutoff are found with one primary-key probe per instrument; each instrument's old
   candles are deleted ``candle_purge_chunk_rows`` at a time, one transaction per chunk, so a
   big purge never holds a long transaction or lock. No chunk is started after
   ``candles_job_max_s``: the summary then says ``complete: false`` and the next run
   continues where this one stopped.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import CursorResult, Result, delete, exists, select, tuple_, update

from ticker_tasks.backfill.store import CONTINUOUS_SUFFIX, OI_SUFFIX
from ticker_tasks.db.models import Candle, FetchedRange, Instrument
from ticker_tasks.market.calendar import IST
from ticker_tasks.runtime import Runtime

log = logging.getLogger(__name__)


def base_interval(stored: str) -> str:
    """The Kite interval of a stored ``candles.interval`` or fetched-range key."""
    return stored.split("+", 1)[0]


def cutoffs(retention_days: Mapping[str, int], now: dt.datetime) -> dict[str, dt.datetime]:
    """Per base interval, the start time before which candles go (midnight IST)."""
    today = now.astimezone(IST).date()
    return {
        interval: dt.datetime.combine(today - dt.timedelta(days=days), dt.time(), tzinfo=IST)
        for interval, days in retention_days.items()
    }


def series_keys(interval: str) -> tuple[str, ...]:
    """The ``candles.interval`` values of a base interval."""
    return (interval, interval + CONTINUOUS_SUFFIX)


def range_keys(interval: str) -> tuple[str, ...]:
    """The ``fetched_ranges.interval`` keys of a base interval."""
    return tuple(k + suffix for k in series_keys(interval) for suffix in ("", OI_SUFFIX))


@dataclass
class PurgeSummary:
    """What one purge did: deleted candles per stored interval, chunks, fetched ranges."""

    cutoffs: dict[str, str]
    deleted: dict[str, int] = field(default_factory=dict)
    chunks: int = 0
    largest_chunk: int = 0
    ranges_deleted: int = 0
    ranges_trimmed: int = 0
    complete: bool = True

    def count_chunk(self, key: str, count: int) -> None:
        """Count one deleted chunk of series ``key`` (an empty one counts nothing)."""
        if count:
            self.deleted[key] = self.deleted.get(key, 0) + count
            self.chunks += 1
            self.largest_chunk = max(self.largest_chunk, count)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON for the task result."""
        return asdict(self)


def trim_fetched_ranges(runtime: Runtime, interval: str, cutoff: dt.datetime) -> tuple[int, int]:
    """Forget fetched time before ``cutoff`` for every key of ``interval`` (one transaction).

    Returns:
        ``(ranges deleted, ranges trimmed)``.
    """
    keys = range_keys(interval)
    at = cutoff.astimezone(dt.UTC)
    with runtime.sessions.begin() as db:
        gone = _rowcount(
            db.execute(
                delete(FetchedRange).where(
                    FetchedRange.interval.in_(keys), FetchedRange.range_end <= at
                )
            )
        )
        trimmed = _rowcount(
            db.execute(
                update(FetchedRange)
                .where(
                    FetchedRange.interval.in_(keys),
                    FetchedRange.range_start < at,
                    FetchedRange.range_end > at,
                )
                .values(range_start=at)
            )
        )
    return gone, trimmed


def _rowcount(result: Result[Any]) -> int:
    """Rows a DELETE or UPDATE touched."""
    return int(result.rowcount) if isinstance(result, CursorResult) else 0


def _instruments_with_old_candles(runtime: Runtime, key: str, cutoff: dt.datetime) -> list[int]:
    old = exists().where(
        Candle.instrument_id == Instrument.instrument_id,
        Candle.interval == key,
        Candle.ts < cutoff,
    )
    with runtime.sessions() as db:
        query = select(Instrument.instrument_id).where(old).order_by(Instrument.instrument_id)
        return [int(i) for i in db.scalars(query)]


def delete_chunk(runtime: Runtime, instrument_id: int, key: str, cutoff: dt.datetime) -> int:
    """Delete the oldest ``candle_purge_chunk_rows`` old candles of one series (a transaction)."""
    oldest = (
        select(Candle.instrument_id, Candle.interval, Candle.ts)
        .where(Candle.instrument_id == instrument_id, Candle.interval == key, Candle.ts < cutoff)
        .order_by(Candle.ts)
        .limit(runtime.settings.candle_purge_chunk_rows)
    )
    with runtime.sessions.begin() as db:
        result = db.execute(
            delete(Candle).where(
                tuple_(Candle.instrument_id, Candle.interval, Candle.ts).in_(oldest)
            )
        )
    return _rowcount(result)


def _old_series(
    runtime: Runtime, limits: Mapping[str, dt.datetime]
) -> Iterator[tuple[str, int, dt.datetime]]:
    """``(series key, instrument_id, cutoff)`` of every series holding candles to purge."""
    for interval, cutoff in limits.items():
        at = cutoff.astimezone(dt.UTC)
        for key in series_keys(interval):
            for instrument_id in _instruments_with_old_candles(runtime, key, at):
                yield key, instrument_id, at


def purge_candles(runtime: Runtime, *, now: dt.datetime | None = None) -> PurgeSummary:
    """Apply ``candle_retention_days`` to ``candles`` and ``fetched_ranges`` (module notes)."""
    settings = runtime.settings
    chunk_rows = settings.candle_purge_chunk_rows
    limits = cutoffs(settings.candle_retention_days, now or dt.datetime.now(dt.UTC))
    summary = PurgeSummary(cutoffs={k: v.isoformat() for k, v in limits.items()})
    _trim_all(runtime, limits, summary)
    deadline = time.monotonic() + settings.candles_job_max_s
    for key, instrument_id, cutoff in _old_series(runtime, limits):
        count = chunk_rows
        while count == chunk_rows:
            if time.monotonic() >= deadline:
                summary.complete = False
                break
            count = delete_chunk(runtime, instrument_id, key, cutoff)
            summary.count_chunk(key, count)
        if not summary.complete:
            break
    _trim_all(runtime, limits, summary)
    log.info("candle purge: %s", summary.as_dict())
    return summary


def _trim_all(runtime: Runtime, limits: Mapping[str, dt.datetime], summary: PurgeSummary) -> None:
    for interval, cutoff in limits.items():
        gone, trimmed = trim_fetched_ranges(runtime, interval, cutoff)
        summary.ranges_deleted += gone
        summary.ranges_trimmed += trimmed
