"""Backfilled candles and the ranges fetched already, in the database.

* Candles are upserted idempotently on their primary key ``(instrument_id, interval, ts)``
  with one bulk statement per chunk (PostgreSQL and SQLite ``INSERT .. ON CONFLICT DO
  UPDATE``): Kite's historical candle is authoritative, so it replaces whatever was stored for
  that minute; ``source`` is ``backfill`` and ``quality`` is ``complete`` (a candle Kite sent
  is a finished bar, not a gap filler); an answer without ``oi`` keeps a stored ``oi``.
* A fetched range records what one request covered; it is merged with overlapping or touching
  ranges of the same key on write (under a per-key transaction lock on PostgreSQL; SQLite
  serializes writers and the merge starts with a write), so the table stays small.
* Every timestamp is stored in UTC (SQLite keeps no offset) and read back timezone-aware.

Keys: candles of a continuous future series are stored under ``<interval>+c`` so they never
mix with the contract's own candles; fetched ranges fetched with ``oi`` are recorded under
``<series>+oi``, and a request without ``oi`` is satisfied by either key.
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from ticker_tasks.backfill.plan import Span, subtract, union
from ticker_tasks.db.models import Candle, FetchedRange

SOURCE = "backfill"
QUALITY = "complete"
CONTINUOUS_SUFFIX = "+c"
OI_SUFFIX = "+oi"
#: First key of the two-key PostgreSQL advisory locks guarding fetched-range merges ("BFRF").
_LOCK_NAMESPACE = 0x42465246
_UTC = dt.UTC


def series_key(interval: str, *, continuous: bool) -> str:
    """The ``candles.interval`` value of a series: ``day``, or ``day+c`` when continuous."""
    return interval + (CONTINUOUS_SUFFIX if continuous else "")


def range_keys(interval: str, *, oi: bool, continuous: bool) -> tuple[str, tuple[str, ...]]:
    """The fetched-range key a request records, and the keys that satisfy it."""
    series = series_key(interval, continuous=continuous)
    with_oi = series + OI_SUFFIX
    return (with_oi, (with_oi,)) if oi else (series, (series, with_oi))


@dataclass(frozen=True, slots=True)
class CandleRow:
    """One candle as stored: ``ts`` is the candle's start, timezone-aware (UTC)."""

    ts: dt.datetime
    open: float
    high: float
    low: float
    close: float
    volume: int
    oi: int | None = None


def candles_from_kite(rows: Iterable[Mapping[str, Any]], span: Span) -> list[CandleRow]:
    """Kite's ``historical_data`` dicts as rows, keeping candles that start in ``span``.

    Kite's ``to`` is inclusive and its day candles start at midnight, so the answer may hold
    a candle outside the half-open span: it belongs to another request and is dropped.
    """
    candles: list[CandleRow] = []
    for row in rows:
        when = row["date"]
        if not isinstance(when, dt.datetime) or when.tzinfo is None:
            raise TypeError(f"candle date must be a timezone-aware datetime: {when!r}")
        ts = when.astimezone(_UTC)
        if not span.start <= ts < span.end:
            continue
        oi = row.get("oi")
        candles.append(
            CandleRow(
                ts=ts,
                open=float(row["open"]),
                high=float(row["high"]),
                low=float(row["low"]),
                close=float(row["close"]),
                volume=int(row["volume"]),
                oi=None if oi is None else int(oi),
            )
        )
    return candles


def _utc(at: dt.datetime) -> dt.datetime:
    """Aware UTC for storing; naive values read back from SQLite are UTC."""
    return at.replace(tzinfo=_UTC) if at.tzinfo is None else at.astimezone(_UTC)


_PG_UPSERT = text(
    """
    INSERT INTO candles (instrument_id, interval, ts, open, high, low, close, volume, oi,
                         source, quality, gap_seconds, updated_at)
    SELECT :instrument_id, :interval, c.ts, c.open, c.high, c.low, c.close, c.volume, c.oi,
           :source, :quality, 0, :now
    FROM unnest(CAST(:ts AS timestamptz[]), CAST(:open AS float8[]), CAST(:high AS float8[]),
                CAST(:low AS float8[]), CAST(:close AS float8[]), CAST(:volume AS bigint[]),
                CAST(:oi AS bigint[])) AS c(ts, open, high, low, close, volume, oi)
    ON CONFLICT (instrument_id, interval, ts) DO UPDATE SET
        open = excluded.open, high = excluded.high, low = excluded.low, close = excluded.close,
        volume = excluded.volume, oi = COALESCE(excluded.oi, candles.oi),
        source = excluded.source, quality = excluded.quality, gap_seconds = 0,
        updated_at = excluded.updated_at
    """
)


def upsert_candles(
    session: Session,
    instrument_id: int,
    series: str,
    candles: Sequence[CandleRow],
    *,
    source: str = SOURCE,
    quality: str = QUALITY,
) -> int:
    """Insert or replace ``candles`` of one series in one bulk statement; returns the count.

    PostgreSQL gets one ``INSERT .. SELECT FROM unnest(arrays)`` (column arrays travel as
    parameters: ~10x faster than a multi-row VALUES list); SQLite an executemany. ``source``
    and ``quality`` label the rows (the completeness check writes ``backfilled``).
    """
    if not candles:
        return 0
    now = dt.datetime.now(_UTC)
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(
            _PG_UPSERT,
            {
                "instrument_id": instrument_id,
                "interval": series,
                "source": source,
                "quality": quality,
                "now": now,
                "ts": [_utc(c.ts) for c in candles],
                "open": [c.open for c in candles],
                "high": [c.high for c in candles],
                "low": [c.low for c in candles],
                "close": [c.close for c in candles],
                "volume": [c.volume for c in candles],
                "oi": [c.oi for c in candles],
            },
        )
        return len(candles)
    if dialect != "sqlite":
        raise NotImplementedError(f"candle upsert is not implemented for {dialect}")
    rows = [
        {
            "instrument_id": instrument_id,
            "interval": series,
            "ts": _utc(c.ts),
            "open": c.open,
            "high": c.high,
            "low": c.low,
            "close": c.close,
            "volume": c.volume,
            "oi": c.oi,
            "source": source,
            "quality": quality,
            "gap_seconds": 0,
            "updated_at": now,
        }
        for c in candles
    ]
    statement = sqlite.insert(Candle)
    excluded = statement.excluded
    statement = statement.on_conflict_do_update(
        index_elements=["instrument_id", "interval", "ts"],
        set_={
            "open": excluded.open,
            "high": excluded.high,
            "low": excluded.low,
            "close": excluded.close,
            "volume": excluded.volume,
            "oi": func.coalesce(excluded.oi, Candle.oi),
            "source": excluded.source,
            "quality": excluded.quality,
            "gap_seconds": excluded.gap_seconds,
            "updated_at": excluded.updated_at,
        },
    )
    session.execute(statement, rows)
    return len(rows)


def _lock_key(session: Session, instrument_id: int, key: str) -> None:
    """Serialize fetched-range merges of one (instrument, key) on PostgreSQL."""
    if session.get_bind().dialect.name != "postgresql":
        return  # SQLite: the DELETE below takes the database write lock first.
    objid = zlib.crc32(f"{instrument_id}:{key}".encode()) - 2**31
    session.execute(
        text("SELECT pg_advisory_xact_lock(:ns, :obj)"), {"ns": _LOCK_NAMESPACE, "obj": objid}
    )


def record_fetched(
    session: Session, instrument_id: int, key: str, span: Span, *, job_id: str | None
) -> Span:
    """Record ``span`` as fetched, merged with the ranges it overlaps or touches.

    Returns:
        The merged range now stored.
    """
    _lock_key(session, instrument_id, key)
    start, end = _utc(span.start), _utc(span.end)
    neighbours = session.execute(
        delete(FetchedRange)
        .where(
            FetchedRange.instrument_id == instrument_id,
            FetchedRange.interval == key,
            FetchedRange.range_start <= end,
            FetchedRange.range_end >= start,
        )
        .returning(FetchedRange.range_start, FetchedRange.range_end)
    ).all()
    for old_start, old_end in neighbours:
        start, end = min(start, _utc(old_start)), max(end, _utc(old_end))
    session.execute(
        insert(FetchedRange).values(
            instrument_id=instrument_id,
            interval=key,
            range_start=start,
            range_end=end,
            job_id=job_id,
            fetched_at=dt.datetime.now(_UTC),
        )
    )
    return Span(start, end)


def forget_fetched(session: Session, instrument_id: int, key: str, span: Span) -> int:
    """Remove ``span`` from the fetched ranges of a key (the next backfill refetches it).

    Candles stay. Returns the number of ranges that were cut or dropped.
    """
    _lock_key(session, instrument_id, key)
    start, end = _utc(span.start), _utc(span.end)
    hit = session.execute(
        delete(FetchedRange)
        .where(
            FetchedRange.instrument_id == instrument_id,
            FetchedRange.interval == key,
            FetchedRange.range_start < end,
            FetchedRange.range_end > start,
        )
        .returning(FetchedRange.range_start, FetchedRange.range_end, FetchedRange.job_id)
    ).all()
    cut = Span(start, end)
    for old_start, old_end, job_id in hit:
        for rest in subtract(Span(_utc(old_start), _utc(old_end)), [cut]):
            session.execute(
                insert(FetchedRange).values(
                    instrument_id=instrument_id,
                    interval=key,
                    range_start=rest.start,
                    range_end=rest.end,
                    job_id=job_id,
                    fetched_at=dt.datetime.now(_UTC),
                )
            )
    return len(hit)


def fetched_spans(
    session: Session, instrument_ids: Sequence[int], keys: Sequence[str], window: Span
) -> dict[int, list[Span]]:
    """Fetched ranges overlapping ``window`` per instrument, merged across ``keys``."""
    if not instrument_ids:
        return {}
    query = select(
        FetchedRange.instrument_id, FetchedRange.range_start, FetchedRange.range_end
    ).where(
        FetchedRange.instrument_id.in_(instrument_ids),
        FetchedRange.interval.in_(keys),
        FetchedRange.range_start < _utc(window.end),
        FetchedRange.range_end > _utc(window.start),
    )
    found: dict[int, list[Span]] = {i: [] for i in instrument_ids}
    for instrument_id, start, end in session.execute(query):
        found[int(instrument_id)].append(Span(_utc(start), _utc(end)))
    return {i: union(spans) for i, spans in found.items()}


def read_candles(
    session: Session, instrument_id: int, series: str, window: Span, *, limit: int | None = None
) -> list[CandleRow]:
    """Stored candles of one series starting in ``window``, oldest first."""
    query = (
        select(
            Candle.ts, Candle.open, Candle.high, Candle.low, Candle.close, Candle.volume, Candle.oi
        )
        .where(
            Candle.instrument_id == instrument_id,
            Candle.interval == series,
            Candle.ts >= _utc(window.start),
            Candle.ts < _utc(window.end),
        )
        .order_by(Candle.ts)
    )
    if limit is not None:
        query = query.limit(limit)
    return [
        CandleRow(_utc(ts), float(o), float(h), float(lo), float(c), int(v), oi)
        for ts, o, h, lo, c, v, oi in session.execute(query)
    ]


def count_candles(session: Session, instrument_ids: Sequence[int], series: str) -> int:
    """Stored candles of a series for several instruments."""
    query = select(func.count()).where(
        Candle.instrument_id.in_(instrument_ids), Candle.interval == series
    )
    return int(session.scalar(query) or 0)
