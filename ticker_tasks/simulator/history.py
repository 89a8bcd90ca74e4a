"""Historical candles aggregated from the trade path.

A minute candle is exactly the minute's trades (first, highest, lowest and last price and the
summed quantity), so a client that received every tick of the stream rebuilds the same
candles. Minutes without trades have no candle. Longer intervals aggregate minute candles in
buckets aligned to the session open (09:15 IST with ``follow_calendar``, midnight IST
otherwise); ``day`` candles are stamped at midnight IST. Only completed minutes are served:
the minute in progress is not part of any candle yet.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Final

import numpy as np
import numpy.typing as npt

from ticker_tasks.simulator.clock import (
    MINUTES_PER_DAY,
    candle_string,
    day_of_minute,
    day_start_minute,
)
from ticker_tasks.simulator.contracts import TICKS_PER_RUPEE
from ticker_tasks.simulator.market import MarketModel

I64 = npt.NDArray[np.int64]

#: Candle length in minutes of each interval name.
INTERVALS: Final[dict[str, int]] = {
    "minute": 1,
    "3minute": 3,
    "5minute": 5,
    "10minute": 10,
    "15minute": 15,
    "30minute": 30,
    "60minute": 60,
    "day": MINUTES_PER_DAY,
}
#: Longest range (days) one request may span per interval (Kite staff on the forum).
MAX_DAYS: Final[dict[str, int]] = {
    "minute": 60,
    "3minute": 100,
    "5minute": 100,
    "10minute": 100,
    "15minute": 200,
    "30minute": 200,
    "60minute": 400,
    "day": 2000,
}
_CHUNK_DAYS: Final = 20


class HistoryError(ValueError):
    """A request Kite answers with an InputException."""


@dataclass(frozen=True, slots=True)
class Candles:
    """Candles of one request as columns (prices in ticks).

    Attributes:
        start: Bucket start minute of each candle.
        open: Open price.
        high: High price.
        low: Low price.
        close: Close price.
        volume: Volume.
        oi: Open interest at the candle's last traded minute.
    """

    start: I64
    open: I64
    high: I64
    low: I64
    close: I64
    volume: I64
    oi: I64

    def rows(self, with_oi: bool) -> list[list[object]]:
        """Kite's JSON rows ``[timestamp, o, h, l, c, v(, oi)]``."""
        out: list[list[object]] = []
        columns = zip(
            self.start.tolist(),
            self.open.tolist(),
            self.high.tolist(),
            self.low.tolist(),
            self.close.tolist(),
            self.volume.tolist(),
            self.oi.tolist(),
            strict=True,
        )
        for start, o, h, lo, c, v, oi in columns:
            row: list[object] = [
                candle_string(start * 60),
                o / TICKS_PER_RUPEE,
                h / TICKS_PER_RUPEE,
                lo / TICKS_PER_RUPEE,
                c / TICKS_PER_RUPEE,
                v,
            ]
            if with_oi:
                row.append(oi)
            out.append(row)
        return out


def check_range(interval: str, from_s: int, to_s: int) -> None:
    """Validate an interval name and a ``[from, to]`` range.

    Raises:
        HistoryError: Unknown interval, ``from`` after ``to`` or a range above the cap.
    """
    if interval not in INTERVALS:
        raise HistoryError("invalid interval")
    if from_s > to_s:
        raise HistoryError("invalid from date: from date should be less than to date")
    span = day_of_minute(to_s // 60) - day_of_minute(from_s // 60)
    if span > MAX_DAYS[interval]:
        raise HistoryError(f"interval exceeds max limit: {MAX_DAYS[interval]} days")


def candle_parts(
    model: MarketModel, row: int, interval: str, from_s: int, to_s: int, last_minute: int
) -> Iterator[Candles]:
    """Candles of one universe row, in chunks of whole days (oldest first).

    Callers in the event loop can yield between chunks (a 2000-day request evaluates about
    three million minutes when every minute trades).

    Args:
        model: The market model.
        row: Universe row.
        interval: One of :data:`INTERVALS`.
        from_s: Range start (epoch seconds, inclusive).
        to_s: Range end (epoch seconds, inclusive).
        last_minute: Last completed minute (later minutes are not served).

    Raises:
        HistoryError: Bad interval or range (checked before the first chunk).
    """
    check_range(interval, from_s, to_s)
    return _parts(model, row, interval, from_s, to_s, last_minute)


def _parts(
    model: MarketModel, row: int, interval: str, from_s: int, to_s: int, last_minute: int
) -> Iterator[Candles]:
    size = INTERVALS[interval]
    u = model.universe
    first, last = from_s // 60, to_s // 60
    if size == MINUTES_PER_DAY:
        first = int(model.clock.bucket_start(np.array([first]), size)[0])
        last = int(model.clock.bucket_start(np.array([last]), size)[0]) + MINUTES_PER_DAY - 1
    first = max(first, int(u.ints("listing_min")[row]))
    last = min(last, last_minute, int(u.ints("expiry_min")[row]) - 1)
    day = day_of_minute(first)
    while first <= last:
        chunk_end = min(last, day_start_minute(day + _CHUNK_DAYS) - 1)
        minutes = model.clock.session_minutes(first, chunk_end)
        if minutes.size:
            yield _aggregate(model, row, minutes, size)
        first = chunk_end + 1
        day += _CHUNK_DAYS


def join(parts: list[Candles]) -> Candles:
    """Concatenate chunks."""
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return Candles(empty, empty, empty, empty, empty, empty, empty)
    names = [f.name for f in fields(Candles)]
    return Candles(*(np.concatenate([getattr(p, name) for p in parts]) for name in names))


def candles(
    model: MarketModel, row: int, interval: str, from_s: int, to_s: int, last_minute: int
) -> Candles:
    """All candles of one universe row (see :func:`candle_parts`)."""
    return join(list(candle_parts(model, row, interval, from_s, to_s, last_minute)))


def _aggregate(model: MarketModel, row: int, minutes: I64, size: int) -> Candles:
    """Candles of ``minutes`` (whole days, so no bucket is split between calls)."""
    f = model.minute_fields(np.array([row], dtype=np.int64), minutes).ravel()
    keep = f.n > 0
    f = f.take(keep)
    if size == 1:
        return Candles(f.minute, f.open, f.high, f.low, f.close, f.volume, f.oi)
    bucket = model.clock.bucket_start(f.minute, size)
    starts, first = np.unique(bucket, return_index=True)
    if starts.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Candles(empty, empty, empty, empty, empty, empty, empty)
    last = np.append(first[1:], bucket.size) - 1
    return Candles(
        starts,
        f.open[first],
        np.maximum.reduceat(f.high, first),
        np.minimum.reduceat(f.low, first),
        f.close[last],
        np.add.reduceat(f.volume, first),
        f.oi[last],
    )
