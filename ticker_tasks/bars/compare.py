"""Stream bars against Kite's minute candles of the same session: pure comparison.

A stream bar *agrees* with Kite's candle of its minute when its volume, high and low lie
within the tolerances, relative to Kite's values (open and close are not compared: volume
and range are what a missed trade changes). Per minute of Kite's answer:

* a stored ``stream`` bar that agrees is *confirmed* (its quality becomes ``complete``,
  whatever it was: ``gap``, ``mock`` and ``replayed`` included, since its values are now
  verified); ``gap_seconds`` is kept as the record of the feed outage;
* a stored ``stream`` bar that disagrees is *replaced* by Kite's candle;
* a minute with no stored bar is *inserted* from Kite's candle;
* a stored REST candle (source ``backfill`` or ``backfilled``) is left alone when it agrees
  (*kept*) and replaced when Kite now says otherwise.

Stored stream bars of minutes Kite has no candle for (Kite sends none for a minute without
trades) are *extra*: counted, never changed. The completeness of the stream is the share of
Kite's minutes whose stream bar agreed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ticker_tasks.backfill.store import CandleRow

#: ``candles.source`` of stream bars (written by :mod:`ticker_tasks.bars.candles`).
STREAM = "stream"
#: ``candles.interval`` of stream bars.
MINUTE = "minute"


@dataclass(frozen=True, slots=True)
class Tolerance:
    """Largest relative differences at which a stream bar still agrees with Kite's candle."""

    volume: float
    price: float

    def close_enough(self, ours: float, theirs: float, relative: float) -> bool:
        """Whether ``ours`` is within ``relative`` of ``theirs`` (exact when ``theirs`` is 0)."""
        return abs(ours - theirs) <= relative * abs(theirs) + 1e-9


@dataclass(frozen=True, slots=True)
class StoredBar:
    """What the comparison needs of a stored minute candle."""

    ts: dt.datetime
    high: float
    low: float
    volume: int
    source: str
    quality: str


def agrees(bar: StoredBar, candle: CandleRow, tolerance: Tolerance) -> bool:
    """Whether ``bar`` matches Kite's ``candle`` in volume, high and low."""
    return (
        tolerance.close_enough(bar.volume, candle.volume, tolerance.volume)
        and tolerance.close_enough(bar.high, candle.high, tolerance.price)
        and tolerance.close_enough(bar.low, candle.low, tolerance.price)
    )


@dataclass(frozen=True)
class SessionComparison:
    """What to do with one instrument's session.

    Attributes:
        rest_minutes: Minutes Kite sent a candle for.
        confirmed: Stream bars that agree (all of them, whatever their quality).
        to_mark: The confirmed bars whose quality is not ``complete`` yet (to update).
        replace: Kite's candles replacing a disagreeing stored bar.
        insert: Kite's candles of minutes with no stored bar.
        kept: REST candles already stored and agreeing (no write).
        extra: Stream bars of minutes Kite sent no candle for (left alone).
    """

    rest_minutes: int
    confirmed: tuple[dt.datetime, ...] = ()
    to_mark: tuple[dt.datetime, ...] = ()
    replace: tuple[CandleRow, ...] = ()
    insert: tuple[CandleRow, ...] = ()
    kept: tuple[dt.datetime, ...] = ()
    extra: tuple[dt.datetime, ...] = ()

    @property
    def completeness_pct(self) -> float | None:
        """Agreeing stream minutes per Kite minute, in percent; None when Kite sent none."""
        if self.rest_minutes == 0:
            return None
        return 100.0 * len(self.confirmed) / self.rest_minutes

    @property
    def writes(self) -> tuple[CandleRow, ...]:
        """Kite's candles to upsert (replacements and insertions), oldest first."""
        return tuple(sorted(self.replace + self.insert, key=lambda c: c.ts))


def compare_session(
    stored: Mapping[dt.datetime, StoredBar],
    rest: Sequence[CandleRow],
    tolerance: Tolerance,
    *,
    complete: str = "complete",
) -> SessionComparison:
    """Compare the stored bars of a session with Kite's candles of it (see the module notes).

    Args:
        stored: Stored minute candles by start time (UTC-aware), every source.
        rest: Kite's candles of the session (start times UTC-aware, unique).
        tolerance: Agreement tolerances.
        complete: The quality of a verified stream bar.
    """
    confirmed: list[dt.datetime] = []
    to_mark: list[dt.datetime] = []
    replace: list[CandleRow] = []
    insert: list[CandleRow] = []
    kept: list[dt.datetime] = []
    seen: set[dt.datetime] = set()
    for candle in rest:
        seen.add(candle.ts)
        bar = stored.get(candle.ts)
        if bar is None:
            insert.append(candle)
        elif not agrees(bar, candle, tolerance):
            replace.append(candle)
        elif bar.source == STREAM:
            confirmed.append(candle.ts)
            if bar.quality != complete:
                to_mark.append(candle.ts)
        else:
            kept.append(candle.ts)
    extra = sorted(ts for ts, bar in stored.items() if bar.source == STREAM and ts not in seen)
    return SessionComparison(
        rest_minutes=len(seen),
        confirmed=tuple(confirmed),
        to_mark=tuple(to_mark),
        replace=tuple(replace),
        insert=tuple(insert),
        kept=tuple(kept),
        extra=tuple(extra),
    )
