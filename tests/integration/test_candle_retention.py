"""Candle retention purge on PostgreSQL: exactly the old candles go, in bounded chunks."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, event, select

from tests.support.instruments import instrument_row
from ticker_tasks.backfill import store
from ticker_tasks.backfill.plan import Span
from ticker_tasks.bars.retention import purge_candles
from ticker_tasks.db.models import Candle, FetchedRange
from ticker_tasks.market.calendar import IST
from ticker_tasks.runtime import Runtime
from ticker_tasks.settings import load_settings

pytestmark = pytest.mark.integration

NOW = dt.datetime(2025, 6, 20, 2, 30, tzinfo=IST)
#: minute keeps 10 days, 5minute 30 days; day is not listed: kept forever.
RETENTION = {"minute": 10, "5minute": 30}
MINUTE_CUTOFF = dt.datetime(2025, 6, 10, tzinfo=IST)
FIVE_CUTOFF = dt.datetime(2025, 5, 21, tzinfo=IST)
CHUNK = 3


def _runtime(url: str, **overrides: object) -> Runtime:
    settings = load_settings(
        database_url=url,
        candle_retention_days=RETENTION,
        candle_purge_chunk_rows=CHUNK,
        **overrides,
    )
    return Runtime.build(settings)


@pytest.fixture
def runtime(db_engine: Engine, migrated_postgres_url: str) -> Iterator[Runtime]:
    runtime = _runtime(migrated_postgres_url)
    yield runtime
    runtime.close()


def _candle(instrument_id: int, interval: str, ts: dt.datetime) -> Candle:
    return Candle(
        instrument_id=instrument_id,
        interval=interval,
        ts=ts,
        open=10.0,
        high=11.0,
        low=9.0,
        close=10.5,
        volume=100,
        oi=None,
        source="backfill",
        quality="complete",
        gap_seconds=0,
    )


def _minutes(start: dt.datetime, count: int) -> list[dt.datetime]:
    return [start + dt.timedelta(minutes=n) for n in range(count)]


def _seed(runtime: Runtime) -> dict[str, set[tuple[int, str, dt.datetime]]]:
    """Old and new candles of two instruments; returns the keys expected to stay and go."""
    old_day = dt.datetime(2025, 6, 9, 9, 15, tzinfo=IST)  # the day before the minute cutoff
    new_day = dt.datetime(2025, 6, 10, 9, 15, tzinfo=IST)  # the cutoff day itself stays
    rows = {
        "gone": [
            *[(1, "minute", ts) for ts in _minutes(old_day, 8)],  # 3 + 3 + 2
            *[(2, "minute", ts) for ts in _minutes(old_day, 2)],  # 2
            *[(1, "5minute+c", ts) for ts in _minutes(FIVE_CUTOFF - dt.timedelta(days=3), 4)],
        ],
        "kept": [
            *[(1, "minute", ts) for ts in _minutes(new_day, 5)],
            *[(2, "minute", ts) for ts in _minutes(NOW - dt.timedelta(hours=20), 2)],
            *[(1, "5minute+c", ts) for ts in _minutes(FIVE_CUTOFF, 2)],
            # Minute-old for minute retention, but 5minute keeps 30 days
            *[(2, "5minute", ts) for ts in _minutes(old_day, 3)],
            # day is not in the retention mapping: never purged
            (1, "day", dt.datetime(2020, 1, 1, tzinfo=IST)),
        ],
    }
    with runtime.sessions.begin() as session:
        session.add_all(
            [
                instrument_row(1, 256265, "NIFTY 50", "EQ", exchange="NSE"),
                instrument_row(2, 408065, "INFY", "EQ", exchange="NSE"),
            ]
        )
        session.flush()
        session.add_all(_candle(*key) for keys in rows.values() for key in keys)
    return {
        name: {(i, k, ts.astimezone(dt.UTC)) for i, k, ts in keys} for name, keys in rows.items()
    }


def _stored(runtime: Runtime) -> set[tuple[int, str, dt.datetime]]:
    with runtime.sessions() as session:
        rows = session.execute(select(Candle.instrument_id, Candle.interval, Candle.ts)).all()
    return {(i, k, ts.astimezone(dt.UTC)) for i, k, ts in rows}


def _record(runtime: Runtime, instrument_id: int, key: str, start: dt.datetime, days: int) -> None:
    with runtime.sessions.begin() as session:
        span = Span(start, start + dt.timedelta(days=days))
        store.record_fetched(session, instrument_id, key, span, job_id=None)


def test_purge_deletes_exactly_the_old_candles_in_bounded_chunks(runtime):
    # Given candles on both sides of the cutoffs for two intervals (and a continuous series)
    expected = _seed(runtime)
    commits: list[int] = []
    event.listen(runtime.engine, "commit", lambda _conn: commits.append(1))
    # When the purge runs with chunks of 3 candles
    summary = purge_candles(runtime, now=NOW)
    # I expect exactly the old candles gone, counted per stored interval
    assert _stored(runtime) == expected["kept"]
    assert summary.deleted == {"minute": 10, "5minute+c": 4}
    assert summary.complete
    # ... in chunks of at most 3, one transaction each: 3+3+2, 2, 3+1
    assert (summary.chunks, summary.largest_chunk) == (6, CHUNK)
    assert len(commits) >= summary.chunks
    assert summary.cutoffs == {
        "minute": MINUTE_CUTOFF.isoformat(),
        "5minute": FIVE_CUTOFF.isoformat(),
    }
    # A second run finds nothing
    again = purge_candles(runtime, now=NOW)
    assert (again.deleted, again.chunks) == ({}, 0)
    assert _stored(runtime) == expected["kept"]


def test_purge_trims_fetched_ranges_so_backfill_fetches_purged_time_again(runtime):
    _seed(runtime)
    start = MINUTE_CUTOFF - dt.timedelta(days=5)
    _record(runtime, 1, "minute", start, 10)  # straddles the cutoff
    _record(runtime, 1, "minute+oi", start, 10)  # straddles the cutoff
    _record(runtime, 2, "minute", start - dt.timedelta(days=30), 3)  # wholly before it
    _record(runtime, 1, "day", dt.datetime(2020, 1, 1, tzinfo=IST), 30)  # not retained
    summary = purge_candles(runtime, now=NOW)
    assert (summary.ranges_deleted, summary.ranges_trimmed) == (1, 2)
    window = Span(start - dt.timedelta(days=60), NOW)
    with runtime.sessions() as session:
        spans = store.fetched_spans(session, [1, 2], ["minute", "minute+oi"], window)
        day_ranges = session.scalars(
            select(FetchedRange.range_start).where(FetchedRange.interval == "day")
        ).all()
    # Backfill now sees only the retained part as fetched: the purged days are missing again
    assert spans == {1: [Span(MINUTE_CUTOFF, start + dt.timedelta(days=10))], 2: []}
    assert [d.astimezone(IST).date() for d in day_ranges] == [dt.date(2020, 1, 1)]


def test_a_purge_out_of_time_stops_between_chunks_and_the_next_run_finishes(
    db_engine, migrated_postgres_url
):
    hurried = _runtime(migrated_postgres_url, candles_job_max_s=1e-9)
    try:
        expected = _seed(hurried)
        stopped = purge_candles(hurried, now=NOW)
        assert not stopped.complete
        assert stopped.chunks == 0
        assert _stored(hurried) == expected["kept"] | expected["gone"]
    finally:
        hurried.close()
    relaxed = _runtime(migrated_postgres_url)
    try:
        finished = purge_candles(relaxed, now=NOW)
        assert finished.complete
        assert _stored(relaxed) == expected["kept"]
    finally:
        relaxed.close()
