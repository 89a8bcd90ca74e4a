"""Closed stream bars into ``candles`` (interval ``minute``, source ``stream``).

One ``INSERT .. SELECT FROM unnest(arrays) ON CONFLICT DO UPDATE`` per chunk. A minute that
REST already supplied (source ``backfill`` or ``backfilled``) is authoritative and is never
overwritten by a stream bar; a stream bar closed again (a late tick, a later outage) replaces
its earlier version.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from sqlalchemy import text
from sqlalchemy.orm import Session

INTERVAL: Final = "minute"
SOURCE: Final = "stream"
_CHUNK: Final = 5_000

_UPSERT = text(
    """
    INSERT INTO candles (instrument_id, interval, ts, open, high, low, close, volume, oi,
                         source, quality, gap_seconds, updated_at)
    SELECT c.instrument_id, :interval, c.ts, c.open, c.high, c.low, c.close, c.volume, c.oi,
           :source, c.quality, c.gap_seconds, :now
    FROM unnest(CAST(:instrument_id AS bigint[]), CAST(:ts AS timestamptz[]),
                CAST(:open AS float8[]), CAST(:high AS float8[]), CAST(:low AS float8[]),
                CAST(:close AS float8[]), CAST(:volume AS bigint[]), CAST(:oi AS bigint[]),
                CAST(:quality AS text[]), CAST(:gap_seconds AS int[]))
         AS c(instrument_id, ts, open, high, low, close, volume, oi, quality, gap_seconds)
    ON CONFLICT (instrument_id, interval, ts) DO UPDATE SET
        open = excluded.open, high = excluded.high, low = excluded.low, close = excluded.close,
        volume = excluded.volume, oi = COALESCE(excluded.oi, candles.oi),
        quality = excluded.quality, gap_seconds = excluded.gap_seconds,
        updated_at = excluded.updated_at
    WHERE candles.source = :source
    """
)


@dataclass(frozen=True, slots=True)
class ClosedBar:
    """A closed 1-minute bar ready for ``candles`` and for publication."""

    instrument_id: int
    instrument_token: int
    minute: int
    open: float
    high: float
    low: float
    close: float
    volume: int
    oi: int | None
    quality: str
    gap_seconds: int

    @property
    def ts(self) -> dt.datetime:
        """The bar's start (UTC)."""
        return dt.datetime.fromtimestamp(self.minute, tz=dt.UTC)


def upsert_stream_bars(session: Session, bars: Sequence[ClosedBar]) -> int:
    """Write ``bars`` (PostgreSQL); returns how many were offered.

    Raises:
        NotImplementedError: The database is not PostgreSQL.
    """
    dialect = session.get_bind().dialect.name
    if dialect != "postgresql":
        raise NotImplementedError(f"stream bars need PostgreSQL, not {dialect}")
    now = dt.datetime.now(dt.UTC)
    for first in range(0, len(bars), _CHUNK):
        part = bars[first : first + _CHUNK]
        session.execute(
            _UPSERT,
            {
                "interval": INTERVAL,
                "source": SOURCE,
                "now": now,
                "instrument_id": [b.instrument_id for b in part],
                "ts": [b.ts for b in part],
                "open": [b.open for b in part],
                "high": [b.high for b in part],
                "low": [b.low for b in part],
                "close": [b.close for b in part],
                "volume": [b.volume for b in part],
                "oi": [b.oi for b in part],
                "quality": [b.quality for b in part],
                "gap_seconds": [b.gap_seconds for b in part],
            },
        )
    return len(bars)
