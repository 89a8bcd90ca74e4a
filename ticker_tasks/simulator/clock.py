"""The simulator's market clock: wall time to trade-path slots, minutes and IST sessions.

Time is counted in whole minutes since the Unix epoch (``minute``) and in trade-path slots
(``slot = minute * slots_per_minute + slot_in_minute``). The IST calendar day of a minute is
``(minute + 330) // 1440`` (IST is UTC+05:30 all year). Two session rules exist:

* always open (default): every minute of every day trades; the trading day is the IST
  calendar day (00:00-24:00), so the simulator streams at any wall-clock time;
* ``follow_calendar``: only 09:15-15:30 IST on Monday-Friday trades (no holiday list).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Final

import numpy as np
import numpy.typing as npt

IST_OFFSET_MIN: Final = 330
MINUTES_PER_DAY: Final = 1440
SESSION_OPEN_MIN: Final = 9 * 60 + 15
SESSION_CLOSE_MIN: Final = 15 * 60 + 30
IST: Final = timezone(timedelta(minutes=IST_OFFSET_MIN), "IST")
_EPOCH_DAY: Final = date(1970, 1, 1)

I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]


def day_of_minute(minute: int) -> int:
    """IST day number (days since 1970-01-01) of an epoch minute."""
    return (minute + IST_OFFSET_MIN) // MINUTES_PER_DAY


def day_start_minute(day: int) -> int:
    """Epoch minute of 00:00 IST of a day number."""
    return day * MINUTES_PER_DAY - IST_OFFSET_MIN


def weekday(day: int) -> int:
    """Weekday of a day number, Monday = 0 (1970-01-01 was a Thursday)."""
    return (day + 3) % 7


def date_of_day(day: int) -> date:
    """Calendar date of a day number."""
    return _EPOCH_DAY + timedelta(days=day)


def day_of_date(value: date) -> int:
    """Day number of a calendar date."""
    return (value - _EPOCH_DAY).days


def ist_string(epoch_s: int) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in IST (the REST timestamp format)."""
    return datetime.fromtimestamp(epoch_s, tz=IST).strftime("%Y-%m-%d %H:%M:%S")


def candle_string(epoch_s: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS+0530`` (the historical candle timestamp format)."""
    return datetime.fromtimestamp(epoch_s, tz=IST).strftime("%Y-%m-%dT%H:%M:%S%z")


def parse_ist(text: str) -> int:
    """Parse ``YYYY-MM-DD[ HH:MM[:SS]]`` (IST) into epoch seconds.

    Raises:
        ValueError: The text is not a date or date-time in one of those formats.
    """
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            parsed = datetime.strptime(text.strip(), fmt)  # noqa: DTZ007  (IST is attached below)
        except ValueError:
            continue
        return int(parsed.replace(tzinfo=IST).astimezone(UTC).timestamp())
    raise ValueError(f"not a date: {text!r}")


class MarketClock:
    """Maps wall time to slots and decides which minutes trade.

    Args:
        slots_per_minute: Trade-path slots per minute.
        follow_calendar: Trade only during NSE hours on weekdays.
        time_source: Returns the current epoch time in seconds (``time.time`` by default).
    """

    def __init__(
        self,
        slots_per_minute: int,
        follow_calendar: bool,
        time_source: Callable[[], float] = time.time,
    ) -> None:
        self.slots_per_minute = slots_per_minute
        self.follow_calendar = follow_calendar
        self._time = time_source

    def now(self) -> float:
        """Current epoch time in seconds."""
        return self._time()

    def slot_at(self, epoch_s: float) -> int:
        """The slot containing an epoch time."""
        return int(epoch_s * 1000.0) * self.slots_per_minute // 60_000

    def slot_start(self, slot: int) -> float:
        """Epoch time (seconds) at which a slot starts."""
        return slot * 60.0 / self.slots_per_minute

    def slot_epoch(self, slot: int) -> int:
        """Whole epoch second of a slot (what packets carry as timestamps)."""
        minute, offset = divmod(slot, self.slots_per_minute)
        return minute * 60 + offset * 60 // self.slots_per_minute

    def session_bounds(self, day: int) -> tuple[int, int]:
        """First and one-past-last trading minute of a day (equal when it does not trade)."""
        start = day_start_minute(day)
        if not self.follow_calendar:
            return start, start + MINUTES_PER_DAY
        if weekday(day) >= 5:
            return start + SESSION_OPEN_MIN, start + SESSION_OPEN_MIN
        return start + SESSION_OPEN_MIN, start + SESSION_CLOSE_MIN

    def previous_close_minute(self, day: int) -> int:
        """Epoch minute at which the previous trading session of ``day`` closed."""
        if not self.follow_calendar:
            return day_start_minute(day)
        previous = day - 1
        while weekday(previous) >= 5:
            previous -= 1
        return day_start_minute(previous) + SESSION_CLOSE_MIN

    def in_session(self, minutes: I64) -> Bools:
        """Whether each epoch minute is a trading minute (vectorized)."""
        minutes = np.asarray(minutes, dtype=np.int64)
        if not self.follow_calendar:
            return np.ones(minutes.shape, dtype=np.bool_)
        local = minutes + IST_OFFSET_MIN
        minute_of_day = local % MINUTES_PER_DAY
        day_weekday = (local // MINUTES_PER_DAY + 3) % 7
        return (
            (day_weekday < 5)
            & (minute_of_day >= SESSION_OPEN_MIN)
            & (minute_of_day < SESSION_CLOSE_MIN)
        )

    def session_minutes(self, first: int, last: int) -> I64:
        """Trading minutes in ``[first, last]`` (inclusive), ascending."""
        if last < first:
            return np.zeros(0, dtype=np.int64)
        minutes = np.arange(first, last + 1, dtype=np.int64)
        if not self.follow_calendar:
            return minutes
        return minutes[self.in_session(minutes)]

    def bucket_start(self, minutes: I64, interval_min: int) -> I64:
        """Start minute of the candle bucket of each minute (aligned to the session open)."""
        if interval_min >= MINUTES_PER_DAY:
            return ((minutes + IST_OFFSET_MIN) // MINUTES_PER_DAY) * MINUTES_PER_DAY - (
                IST_OFFSET_MIN
            )
        day_start = ((minutes + IST_OFFSET_MIN) // MINUTES_PER_DAY) * MINUTES_PER_DAY
        day_start -= IST_OFFSET_MIN
        anchor = day_start + (SESSION_OPEN_MIN if self.follow_calendar else 0)
        return anchor + ((minutes - anchor) // interval_min) * interval_min
