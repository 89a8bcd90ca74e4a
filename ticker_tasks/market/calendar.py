"""NSE trading sessions and holidays, in Asia/Kolkata.

Sessions and holidays come from ``pandas_market_calendars`` (calendar ``"XNSE"``, the same class
as ``"NSE"``), read once for a range of years when a :class:`TradingCalendar` is built and kept
in the instance. Assumptions, all deliberate:

* The normal session is 09:15-15:30 IST; a minute bar starts every minute from the open, so a
  full day has 375 bars (09:15 ... 15:29). An instant is *inside* a session when
  ``open <= at < close``.
* Pre-open is 09:00-09:08 IST: ``pre_open_end`` is the end of the order-entry window (NSE
  closes it at a random moment between 09:07 and 09:08); order matching and the buffer to the
  09:15 open follow. For sessions with another open time (Muhurat, special sessions) pre-open
  is taken as 15 to 7 minutes before the open, the same shape.
* The library knows some Muhurat sessions (e.g. 2024-11-01 18:00-19:00) but not all (it misses
  weekend sessions such as 2023-11-12, and special Saturday sessions such as 2024-01-20 or
  2024-03-02). Pass those as ``special_sessions`` (IST wall-clock open and close); they
  replace whatever the library says about that day. ``extra_holidays`` closes days the library
  still lists as open (ad-hoc closures).
* The library publishes holidays only for years already announced (up to 2026 in
  pandas_market_calendars 5.5); for later years it closes weekends only.
  :attr:`TradingCalendar.years_without_holidays` lists such years so a caller can warn.
* Every query must fall inside the calendar's year range (IST); outside it raises
  :class:`CalendarRangeError` rather than guessing. Datetimes must be timezone-aware (any zone);
  naive ones raise :class:`~ticker_tasks.errors.ValidationError`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import pandas as pd
import pandas_market_calendars as mcal

from ticker_tasks.errors import ValidationError

IST = ZoneInfo("Asia/Kolkata")
#: The pandas_market_calendars calendar of the National Stock Exchange of India.
NSE_CALENDAR = "XNSE"
NORMAL_OPEN = dt.time(9, 15)
NORMAL_CLOSE = dt.time(15, 30)
PRE_OPEN_START = dt.time(9, 0)
PRE_OPEN_END = dt.time(9, 8)
_PRE_OPEN_LEAD = dt.timedelta(minutes=15)
_PRE_OPEN_ORDER_ENTRY = dt.timedelta(minutes=8)
_BAR_S = 60


class CalendarRangeError(ValidationError):
    """A query fell outside the years the calendar was built for."""


@dataclass(frozen=True, slots=True)
class Session:
    """One trading session; every datetime is timezone-aware in Asia/Kolkata.

    Attributes:
        day: The trading day (IST).
        pre_open_start: Start of pre-open order entry (09:00 on a normal day).
        pre_open_end: End of pre-open order entry (09:08 on a normal day).
        open: Start of continuous trading (09:15 on a normal day).
        close: End of continuous trading (15:30 on a normal day), exclusive.
        special: Whether the session has non-standard hours (Muhurat, special sessions).
    """

    day: dt.date
    pre_open_start: dt.datetime
    pre_open_end: dt.datetime
    open: dt.datetime
    close: dt.datetime
    special: bool = False

    @property
    def minute_count(self) -> int:
        """Number of 1-minute bars in the session (375 on a normal day)."""
        return int((self.close - self.open).total_seconds()) // _BAR_S

    def contains(self, at: dt.datetime) -> bool:
        """Whether a tz-aware instant lies in continuous trading (``open <= at < close``)."""
        return self.open <= _aware(at) < self.close


def _aware(at: dt.datetime) -> dt.datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValidationError(f"datetime {at.isoformat()} must be timezone-aware")
    return at


def _make_session(day: dt.date, open_t: dt.time, close_t: dt.time, *, special: bool) -> Session:
    opened = dt.datetime.combine(day, open_t, tzinfo=IST)
    if special:
        pre_start, pre_end = (
            opened - _PRE_OPEN_LEAD,
            opened - _PRE_OPEN_LEAD + _PRE_OPEN_ORDER_ENTRY,
        )
    else:
        pre_start = dt.datetime.combine(day, PRE_OPEN_START, tzinfo=IST)
        pre_end = dt.datetime.combine(day, PRE_OPEN_END, tzinfo=IST)
    closed = dt.datetime.combine(day, close_t, tzinfo=IST)
    return Session(day, pre_start, pre_end, opened, closed, special)


def _library_sessions(first_year: int, last_year: int) -> dict[dt.date, tuple[dt.time, dt.time]]:
    calendar = mcal.get_calendar(NSE_CALENDAR)
    schedule = calendar.schedule(
        start_date=f"{first_year}-01-01", end_date=f"{last_year}-12-31", tz=str(IST)
    )
    days = schedule.index.date
    opens = schedule["market_open"].dt.time
    closes = schedule["market_close"].dt.time
    return {day: (o, c) for day, o, c in zip(days, opens.tolist(), closes.tolist(), strict=True)}


class TradingCalendar:
    """NSE sessions for a range of years, cached in the instance.

    Build one per process (it costs one library call) and pass it where needed.
    """

    def __init__(
        self,
        first_year: int,
        last_year: int,
        *,
        special_sessions: Mapping[dt.date, tuple[dt.time, dt.time]] | None = None,
        extra_holidays: Collection[dt.date] = (),
    ) -> None:
        """Read the library's schedule for ``first_year``..``last_year`` (inclusive, IST).

        Args:
            first_year: First calendar year covered.
            last_year: Last calendar year covered.
            special_sessions: Extra or replacement sessions: day -> (open, close) as IST
                wall-clock times on whole minutes (e.g. Muhurat trading).
            extra_holidays: Days to close although the library lists them as trading days.

        Raises:
            ValidationError: The year range is empty, or a special session or extra holiday
                lies outside it or has ``open >= close`` or times off whole minutes.
        """
        if last_year < first_year:
            raise ValidationError(f"empty year range {first_year}..{last_year}")
        self._first = dt.date(first_year, 1, 1)
        self._last = dt.date(last_year, 12, 31)
        self._lo_s = dt.datetime.combine(self._first, dt.time(), tzinfo=IST).timestamp()
        after_last = self._last + dt.timedelta(days=1)
        self._hi_s = dt.datetime.combine(after_last, dt.time(), tzinfo=IST).timestamp()
        hours = _library_sessions(first_year, last_year)
        self._years_without_holidays = _years_without_holidays(hours, first_year, last_year)
        special_days = set(special_sessions or {})
        for day in extra_holidays:
            self._check_day(day)
            hours.pop(day, None)
        for day, (open_t, close_t) in (special_sessions or {}).items():
            self._check_day(day)
            off_minute = any(t.second or t.microsecond for t in (open_t, close_t))
            if open_t >= close_t or off_minute:
                raise ValidationError(
                    f"special session {day}: open {open_t} must precede close {close_t}, "
                    "both on whole minutes"
                )
            hours[day] = (open_t, close_t)
        self._sessions = tuple(
            _make_session(
                day,
                o,
                c,
                special=day in special_days or (o, c) != (NORMAL_OPEN, NORMAL_CLOSE),
            )
            for day, (o, c) in sorted(hours.items())
        )
        self._by_day = {s.day: s for s in self._sessions}
        self._days = np.array([s.day for s in self._sessions], dtype="datetime64[D]")
        self._open_s = np.array([s.open.timestamp() for s in self._sessions], dtype=np.int64)
        self._close_s = np.array([s.close.timestamp() for s in self._sessions], dtype=np.int64)

    def __repr__(self) -> str:
        """Show the covered years and the number of sessions."""
        return (
            f"TradingCalendar({self._first.year}..{self._last.year}, "
            f"sessions={len(self._sessions)})"
        )

    @property
    def first_day(self) -> dt.date:
        """First day covered (1 January of the first year)."""
        return self._first

    @property
    def last_day(self) -> dt.date:
        """Last day covered (31 December of the last year)."""
        return self._last

    @property
    def years_without_holidays(self) -> tuple[int, ...]:
        """Years in range for which the library lists no weekday holiday (not yet published)."""
        return self._years_without_holidays

    def session(self, day: dt.date) -> Session | None:
        """The session of ``day`` (IST), or None when the market is closed that day."""
        self._check_day(day)
        return self._by_day.get(day)

    def is_trading_day(self, day: dt.date) -> bool:
        """Whether ``day`` (IST) has a session."""
        return self.session(day) is not None

    def sessions(self, start: dt.date, end: dt.date) -> list[Session]:
        """Sessions of the days from ``start`` to ``end``, both inclusive, in order."""
        self._check_day(start)
        self._check_day(end)
        lo = int(np.searchsorted(self._days, np.datetime64(start, "D"), side="left"))
        hi = int(np.searchsorted(self._days, np.datetime64(end, "D"), side="right"))
        return list(self._sessions[lo:hi])

    def is_market_open(self, at: dt.datetime) -> bool:
        """Whether continuous trading is on at ``at`` (tz-aware): ``open <= at < close``."""
        ts = self._instant(at)
        i = int(np.searchsorted(self._open_s, ts, side="right")) - 1
        return i >= 0 and bool(ts < self._close_s[i])

    def next_session(self, after: dt.datetime) -> Session:
        """The first session whose open is strictly later than ``after`` (tz-aware).

        Raises:
            CalendarRangeError: No such session inside the calendar's years.
        """
        i = int(np.searchsorted(self._open_s, self._instant(after), side="right"))
        if i >= len(self._sessions):
            raise CalendarRangeError(f"no session after {after.isoformat()} up to {self._last}")
        return self._sessions[i]

    def previous_close(self, before: dt.datetime) -> dt.datetime:
        """The latest session close at or before ``before`` (tz-aware), in IST.

        Raises:
            CalendarRangeError: No such close inside the calendar's years.
        """
        i = int(np.searchsorted(self._close_s, self._instant(before), side="right")) - 1
        if i < 0:
            raise CalendarRangeError(f"no session close before {before.isoformat()}")
        return self._sessions[i].close

    def minutes(self, start: dt.datetime, end: dt.datetime) -> pd.DatetimeIndex:
        """Starts of the 1-minute bars inside sessions that lie in ``[start, end)``.

        Vectorized over sessions; a full normal day yields 375 bars, 09:15 to 15:29.

        Args:
            start: Inclusive lower bound (tz-aware).
            end: Exclusive upper bound (tz-aware).

        Returns:
            The bar starts, ascending, as a ``datetime64[ns, Asia/Kolkata]`` index.
        """
        lo_ts, hi_ts = self._instant(start), self._instant(end)
        lo = int(np.searchsorted(self._close_s, lo_ts, side="right"))
        hi = int(np.searchsorted(self._open_s, hi_ts, side="left"))
        opens = self._open_s[lo:hi]
        counts = (self._close_s[lo:hi] - opens) // _BAR_S
        firsts = np.cumsum(counts) - counts
        offsets = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(firsts, counts)
        starts = np.repeat(opens, counts) + offsets * _BAR_S
        starts = starts[(starts >= lo_ts) & (starts < hi_ts)]
        utc = pd.DatetimeIndex(starts.astype("datetime64[s]").astype("datetime64[ns]"))
        return utc.tz_localize("UTC").tz_convert(str(IST))

    def _check_day(self, day: dt.date) -> None:
        if not self._first <= day <= self._last:
            raise CalendarRangeError(
                f"day {day} outside the calendar's range {self._first}..{self._last}"
            )

    def _instant(self, at: dt.datetime) -> float:
        ts = _aware(at).timestamp()
        if not self._lo_s <= ts <= self._hi_s:
            raise CalendarRangeError(
                f"{at.isoformat()} outside the calendar's range {self._first}..{self._last} IST"
            )
        return ts


def _years_without_holidays(
    hours: Mapping[dt.date, object], first_year: int, last_year: int
) -> tuple[int, ...]:
    missing: list[int] = []
    for year in range(first_year, last_year + 1):
        weekdays: npt.NDArray[np.bool_] = np.is_busday(
            np.arange(f"{year}-01-01", f"{year + 1}-01-01", dtype="datetime64[D]")
        )
        trading = sum(1 for day in hours if day.year == year and day.weekday() < 5)
        if trading >= int(weekdays.sum()):
            missing.append(year)
    return tuple(missing)
