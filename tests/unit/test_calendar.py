"""NSE trading calendar: holidays, session edges, minute grids, time zones, special sessions."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from ticker_tasks.errors import ValidationError
from ticker_tasks.market.calendar import IST, CalendarRangeError, TradingCalendar

UTC = dt.UTC
MUHURAT_2023 = dt.date(2023, 11, 12)  # a Sunday: the library does not list it


@pytest.fixture(scope="module")
def calendar() -> TradingCalendar:
    return TradingCalendar(
        2023, 2025, special_sessions={MUHURAT_2023: (dt.time(18, 15), dt.time(19, 15))}
    )


def ist(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=IST)


@pytest.mark.parametrize(
    "day",
    [
        dt.date(2024, 1, 26),  # Republic Day
        dt.date(2024, 8, 15),  # Independence Day
        dt.date(2024, 1, 22),  # special holiday (Ayodhya)
        dt.date(2025, 10, 2),  # Gandhi Jayanti
    ],
)
def test_known_holidays_are_closed(calendar, day):
    assert not calendar.is_trading_day(day)
    assert calendar.session(day) is None
    assert not calendar.is_market_open(ist(day.year, day.month, day.day, 11, 0))


@pytest.mark.parametrize("day", [dt.date(2024, 1, 27), dt.date(2024, 1, 28)])
def test_weekends_are_closed(calendar, day):
    assert day.weekday() >= 5
    assert not calendar.is_trading_day(day)
    assert not calendar.is_market_open(ist(day.year, day.month, day.day, 11, 0))


def test_ordinary_weekday_session_times(calendar):
    session = calendar.session(dt.date(2024, 1, 25))
    assert session is not None
    assert session.open == ist(2024, 1, 25, 9, 15)
    assert session.close == ist(2024, 1, 25, 15, 30)
    assert session.pre_open_start == ist(2024, 1, 25, 9, 0)
    assert session.pre_open_end == ist(2024, 1, 25, 9, 8)
    assert session.open.utcoffset() == dt.timedelta(hours=5, minutes=30)
    assert not session.special
    assert session.minute_count == 375
    assert session.contains(dt.datetime(2024, 1, 25, 4, 0, tzinfo=UTC))
    assert not session.contains(session.close)


@pytest.mark.parametrize(
    ("at", "is_open"),
    [
        (ist(2024, 1, 25, 9, 14, 59), False),
        (ist(2024, 1, 25, 9, 15), True),
        (ist(2024, 1, 25, 12, 0), True),
        (ist(2024, 1, 25, 15, 29, 59), True),
        (ist(2024, 1, 25, 15, 30), False),
        (ist(2024, 1, 25, 9, 5), False),  # pre-open is not continuous trading
    ],
)
def test_session_edges(calendar, at, is_open):
    assert calendar.is_market_open(at) is is_open


def test_other_time_zones_are_converted(calendar):
    # 03:45 UTC == 09:15 IST; 03:44:59 UTC is a second before the open.
    assert calendar.is_market_open(dt.datetime(2024, 1, 25, 3, 45, tzinfo=UTC))
    assert not calendar.is_market_open(dt.datetime(2024, 1, 25, 3, 44, 59, tzinfo=UTC))
    new_york = ZoneInfo("America/New_York")
    # 2024-01-25 05:00 in New York (UTC-5) == 15:30 IST: just closed.
    assert not calendar.is_market_open(dt.datetime(2024, 1, 25, 5, 0, tzinfo=new_york))
    assert calendar.is_market_open(dt.datetime(2024, 1, 25, 4, 59, tzinfo=new_york))


def test_naive_datetimes_are_rejected(calendar):
    with pytest.raises(ValidationError, match="timezone-aware"):
        calendar.is_market_open(dt.datetime(2024, 1, 25, 10, 0))
    with pytest.raises(ValidationError):
        calendar.minutes(dt.datetime(2024, 1, 25), ist(2024, 1, 26))


def test_minutes_of_a_full_day(calendar):
    minutes = calendar.minutes(ist(2024, 1, 25, 0, 0), ist(2024, 1, 26, 0, 0))
    assert isinstance(minutes, pd.DatetimeIndex)
    assert len(minutes) == 375
    assert minutes[0] == pd.Timestamp("2024-01-25 09:15", tz="Asia/Kolkata")
    assert minutes[-1] == pd.Timestamp("2024-01-25 15:29", tz="Asia/Kolkata")
    assert str(minutes.tz) == "Asia/Kolkata"
    assert (np.diff(minutes.asi8) == 60 * 10**9).all()


def test_minutes_is_half_open_and_skips_closed_days(calendar):
    # Thursday 25 Jan 12:00 to Monday 29 Jan 09:20: Friday is Republic Day, then a weekend.
    minutes = calendar.minutes(ist(2024, 1, 25, 12, 0), ist(2024, 1, 29, 9, 20))
    assert len(minutes) == (15 * 60 + 30 - 12 * 60) + 5
    assert minutes[0] == pd.Timestamp("2024-01-25 12:00", tz="Asia/Kolkata")
    assert minutes[-1] == pd.Timestamp("2024-01-29 09:19", tz="Asia/Kolkata")
    assert not (minutes.date == dt.date(2024, 1, 26)).any()


def test_minutes_accepts_utc_bounds_and_mid_minute_starts(calendar):
    start = dt.datetime(2024, 1, 25, 3, 45, 30, tzinfo=UTC)  # 09:15:30 IST
    minutes = calendar.minutes(start, dt.datetime(2024, 1, 25, 4, 0, tzinfo=UTC))
    assert minutes[0] == pd.Timestamp("2024-01-25 09:16", tz="Asia/Kolkata")
    assert len(minutes) == 14


def test_minutes_over_a_year_match_the_sessions(calendar):
    minutes = calendar.minutes(ist(2024, 1, 1, 0, 0), ist(2025, 1, 1, 0, 0))
    sessions = calendar.sessions(dt.date(2024, 1, 1), dt.date(2024, 12, 31))
    assert len(minutes) == sum(s.minute_count for s in sessions)
    assert minutes.is_monotonic_increasing
    assert minutes.is_unique


def test_empty_minute_range(calendar):
    assert len(calendar.minutes(ist(2024, 1, 27, 0, 0), ist(2024, 1, 28, 23, 0))) == 0


def test_sessions_iterates_trading_days_inclusive(calendar):
    sessions = calendar.sessions(dt.date(2024, 1, 22), dt.date(2024, 1, 29))
    assert [s.day for s in sessions] == [
        dt.date(2024, 1, 23),
        dt.date(2024, 1, 24),
        dt.date(2024, 1, 25),
        dt.date(2024, 1, 29),
    ]


def test_next_session_and_previous_close(calendar):
    assert calendar.next_session(ist(2024, 1, 25, 8, 0)).day == dt.date(2024, 1, 25)
    assert calendar.next_session(ist(2024, 1, 25, 10, 0)).day == dt.date(2024, 1, 29)
    assert calendar.previous_close(ist(2024, 1, 29, 10, 0)) == ist(2024, 1, 25, 15, 30)
    assert calendar.previous_close(ist(2024, 1, 25, 15, 30)) == ist(2024, 1, 25, 15, 30)
    assert calendar.previous_close(ist(2024, 1, 25, 15, 29)) == ist(2024, 1, 24, 15, 30)


def test_special_session_from_the_constructor(calendar):
    session = calendar.session(MUHURAT_2023)
    assert session is not None
    assert session.special
    assert (session.open, session.close) == (ist(2023, 11, 12, 18, 15), ist(2023, 11, 12, 19, 15))
    assert session.pre_open_start == ist(2023, 11, 12, 18, 0)
    assert calendar.is_market_open(ist(2023, 11, 12, 18, 30))
    assert not calendar.is_market_open(ist(2023, 11, 12, 19, 15))
    assert len(calendar.minutes(ist(2023, 11, 12, 0, 0), ist(2023, 11, 13, 0, 0))) == 60


def test_special_session_is_absent_without_the_argument():
    plain = TradingCalendar(2023, 2023)
    assert plain.session(MUHURAT_2023) is None


def test_library_muhurat_session_is_special(calendar):
    session = calendar.session(dt.date(2024, 11, 1))
    assert session is not None
    assert session.special
    assert session.open == ist(2024, 11, 1, 18, 0)
    assert not calendar.is_market_open(ist(2024, 11, 1, 10, 0))


def test_extra_holidays_close_a_library_trading_day():
    closed = TradingCalendar(2024, 2024, extra_holidays=[dt.date(2024, 1, 25)])
    assert not closed.is_trading_day(dt.date(2024, 1, 25))
    assert closed.is_trading_day(dt.date(2024, 1, 24))


def test_bad_constructor_arguments():
    with pytest.raises(ValidationError):
        TradingCalendar(2025, 2024)
    with pytest.raises(ValidationError):
        TradingCalendar(
            2024, 2024, special_sessions={dt.date(2024, 3, 2): (dt.time(15), dt.time(9))}
        )
    with pytest.raises(CalendarRangeError):
        TradingCalendar(
            2024, 2024, special_sessions={dt.date(2020, 3, 2): (dt.time(9), dt.time(10))}
        )


def test_queries_outside_the_range_raise(calendar):
    with pytest.raises(CalendarRangeError):
        calendar.session(dt.date(2022, 12, 30))
    with pytest.raises(CalendarRangeError):
        calendar.is_market_open(ist(2026, 1, 2, 10, 0))
    with pytest.raises(CalendarRangeError):
        calendar.next_session(ist(2025, 12, 31, 16, 0))


def test_years_without_published_holidays_are_reported():
    assert TradingCalendar(2024, 2024).years_without_holidays == ()
    assert 2035 in TradingCalendar(2035, 2035).years_without_holidays
