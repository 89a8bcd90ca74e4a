"""Backfill planning: what is missing, and the fewest Kite requests that fetch it."""

from __future__ import annotations

import datetime as dt
import itertools
import math
import typing
from collections.abc import Sequence

import pytest

from schemas.backfill import BackfillRequest, Interval
from ticker_tasks.backfill.plan import (
    INTERVALS,
    RANGE_CAP_DAYS,
    Plan,
    Span,
    plan_requests,
    range_caps,
    request_limit,
    request_window,
    subtract,
    union,
)
from ticker_tasks.errors import ValidationError
from ticker_tasks.market.calendar import IST, TradingCalendar

NOW = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def calendar() -> TradingCalendar:
    return TradingCalendar(2023, 2025)


def at(day: str, hhmm: str = "00:00") -> dt.datetime:
    return dt.datetime.fromisoformat(f"{day}T{hhmm}").replace(tzinfo=IST)


def span(a: str, b: str) -> Span:
    return Span(at(*a.split()), at(*b.split()))


def plan(
    calendar: TradingCalendar,
    interval: str,
    window: Span,
    fetched: Sequence[Span] = (),
    now: dt.datetime = NOW,
    cap: int | None = None,
) -> Plan:
    return plan_requests(calendar, interval, window, list(fetched), now=now, cap_days=cap)


def test_intervals_and_caps_match_the_public_schema_and_kite():
    assert set(INTERVALS) == set(typing.get_args(Interval))
    assert RANGE_CAP_DAYS == {
        "minute": 60,
        "3minute": 100,
        "5minute": 100,
        "10minute": 100,
        "15minute": 200,
        "30minute": 200,
        "60minute": 400,
        "day": 2000,
    }
    assert range_caps({"minute": 30})["minute"] == 30
    with pytest.raises(ValidationError):
        range_caps({"week": 3})


def test_a_date_to_is_inclusive_and_a_datetime_to_exclusive():
    assert request_window(dt.date(2024, 1, 1), dt.date(2024, 1, 2)) == span(
        "2024-01-01 00:00", "2024-01-03 00:00"
    )
    naive = request_window(dt.datetime(2024, 1, 1, 9, 15), dt.datetime(2024, 1, 1, 10, 0))
    assert naive == span("2024-01-01 09:15", "2024-01-01 10:00")
    with pytest.raises(ValidationError):
        request_window(dt.date(2024, 1, 2), dt.date(2024, 1, 1))


def test_weekends_and_holidays_need_nothing(calendar):
    # 2024-01-20/21 is a weekend (the 20th a special session, not in the library) and
    # 2024-01-26 (Republic Day) a holiday: a window of only those days needs no request.
    for closed in ("2024-01-21", "2024-01-26", "2024-01-27"):
        window = request_window(dt.date.fromisoformat(closed), dt.date.fromisoformat(closed))
        result = plan(calendar, "minute", window)
        assert result.needed == ()
        assert result.requests == ()


def test_an_untouched_week_is_one_request_across_nights_and_the_weekend(calendar):
    # Given nothing fetched from Thursday to the next Wednesday
    window = request_window(dt.date(2024, 1, 4), dt.date(2024, 1, 10))
    # When planning minute candles
    result = plan(calendar, "minute", window)
    # I expect one session span per trading day and a single request over all of them
    assert len(result.needed) == 5
    assert result.needed[0] == span("2024-01-04 09:15", "2024-01-04 15:30")
    assert result.requests == (span("2024-01-04 09:15", "2024-01-10 15:30"),)


def test_fetched_ranges_are_not_requested_again(calendar):
    window = request_window(dt.date(2024, 1, 1), dt.date(2024, 3, 28))
    everything = [span("2023-12-01 00:00", "2024-04-01 00:00")]
    assert plan(calendar, "minute", window, everything).requests == ()


def test_a_hole_in_the_middle_is_the_only_request(calendar):
    # Given two months fetched except one week in the middle
    window = request_window(dt.date(2024, 1, 1), dt.date(2024, 2, 29))
    fetched = [
        span("2024-01-01 09:15", "2024-01-15 09:15"),
        span("2024-01-19 15:30", "2024-03-01 00:00"),
    ]
    # When planning
    result = plan(calendar, "minute", window, fetched)
    # I expect one request from Monday's open to Friday's close (nights not in between)
    assert result.requests == (span("2024-01-15 09:15", "2024-01-19 15:30"),)


def test_two_holes_separated_by_fetched_session_time_stay_two_requests(calendar):
    window = request_window(dt.date(2024, 1, 1), dt.date(2024, 1, 31))
    fetched = [
        span("2024-01-01 00:00", "2024-01-09 09:15"),
        span("2024-01-10 09:15", "2024-01-23 09:15"),
        span("2024-01-24 09:15", "2024-02-01 00:00"),
    ]
    result = plan(calendar, "minute", window, fetched)
    assert result.requests == (
        span("2024-01-09 09:15", "2024-01-09 15:30"),
        span("2024-01-23 09:15", "2024-01-23 15:30"),
    )


def test_a_partly_fetched_session_asks_only_for_the_rest(calendar):
    window = request_window(dt.date(2024, 1, 8), dt.date(2024, 1, 8))
    fetched = [span("2024-01-08 09:15", "2024-01-08 12:00")]
    assert plan(calendar, "minute", window, fetched).requests == (
        span("2024-01-08 12:00", "2024-01-08 15:30"),
    )


@pytest.mark.parametrize("interval", ["minute", "5minute", "60minute"])
def test_long_ranges_split_into_the_fewest_requests_within_the_cap(calendar, interval):
    # Given two years of nothing fetched
    window = request_window(dt.date(2023, 1, 2), dt.date(2024, 12, 31))
    # When planning
    requests = plan(calendar, interval, window).requests
    # I expect requests that respect Kite's cap (days between from and the inclusive to) ...
    cap = RANGE_CAP_DAYS[interval]
    for request in requests:
        last = (request.end - dt.timedelta(seconds=1)).astimezone(IST).date()
        assert (last - request.start.astimezone(IST).date()).days <= cap
        assert request.end <= request_limit(request.start, cap)
    # ... that do not overlap, cover every session, and are as few as the cap allows
    assert all(a.end <= b.start for a, b in itertools.pairwise(requests))
    first_open = at("2023-01-02", "09:15")
    last_close = at("2024-12-31", "15:30")
    days = (last_close.date() - first_open.date()).days + 1
    assert len(requests) == math.ceil(days / (cap + 1))
    assert requests[0].start == first_open
    assert requests[-1].end == last_close


def test_a_cap_reaches_the_end_of_its_last_day(calendar):
    # A request starting on day D may reach the end of day D + 60.
    window = request_window(dt.date(2024, 1, 1), dt.date(2024, 3, 1))
    assert plan(calendar, "minute", window).requests == (
        span("2024-01-01 09:15", "2024-03-01 15:30"),
    )
    window = request_window(dt.date(2024, 1, 1), dt.date(2024, 3, 4))
    assert plan(calendar, "minute", window).requests == (
        span("2024-01-01 09:15", "2024-03-01 15:30"),
        span("2024-03-04 09:15", "2024-03-04 15:30"),
    )


def test_day_candles_start_at_midnight_and_need_a_closed_session(calendar):
    window = request_window(dt.date(2024, 1, 22), dt.date(2024, 1, 26))
    result = plan(calendar, "day", window)
    # 22nd was a holiday (Ayodhya), 26th Republic Day: three trading days.
    assert [s.start.date() for s in result.needed] == [
        dt.date(2024, 1, 23),
        dt.date(2024, 1, 24),
        dt.date(2024, 1, 25),
    ]
    assert result.requests == (span("2024-01-23 00:00", "2024-01-26 00:00"),)
    # While the 25th's session runs, its day candle is not needed yet.
    running = at("2024-01-25", "11:00")
    assert plan(calendar, "day", window, now=running).requests == (
        span("2024-01-23 00:00", "2024-01-25 00:00"),
    )


def test_ten_years_of_day_candles_take_two_requests(calendar):
    cal = TradingCalendar(2015, 2024)
    window = request_window(dt.date(2015, 1, 1), dt.date(2024, 12, 31))
    assert len(plan(cal, "day", window).requests) == 2


def test_the_forming_candle_is_not_needed_yet(calendar):
    window = request_window(dt.date(2024, 1, 8), dt.date(2024, 1, 8))
    now = at("2024-01-08", "10:07")
    assert plan(calendar, "minute", window, now=now).requests == (
        span("2024-01-08 09:15", "2024-01-08 10:07"),
    )
    assert plan(calendar, "5minute", window, now=now).requests == (
        span("2024-01-08 09:15", "2024-01-08 10:05"),
    )
    assert plan(calendar, "minute", window, now=at("2024-01-08", "08:00")).requests == ()


def test_intraday_windows_snap_to_the_interval_grid(calendar):
    # 60-minute candles start 09:15, 10:15, ... 15:15; a window 10:00-15:20 holds 10:15..15:15.
    window = request_window(dt.datetime(2024, 3, 1, 10, 0), dt.datetime(2024, 3, 1, 15, 20))
    assert plan(calendar, "60minute", window).requests == (
        span("2024-03-01 10:15", "2024-03-01 15:30"),
    )


def test_union_and_subtract():
    a = span("2024-01-01 09:00", "2024-01-01 10:00")
    b = span("2024-01-01 10:00", "2024-01-01 11:00")
    c = span("2024-01-01 12:00", "2024-01-01 13:00")
    assert union([c, b, a]) == [span("2024-01-01 09:00", "2024-01-01 11:00"), c]
    whole = span("2024-01-01 08:00", "2024-01-01 14:00")
    assert subtract(whole, union([a, b, c])) == [
        span("2024-01-01 08:00", "2024-01-01 09:00"),
        span("2024-01-01 11:00", "2024-01-01 12:00"),
        span("2024-01-01 13:00", "2024-01-01 14:00"),
    ]


def test_request_payload_validation():
    request = BackfillRequest.model_validate(
        {
            "instruments": ["NSE:INFY", 408065, "256265"],
            "interval": "minute",
            "from": "2024-01-01",
            "to": "2024-01-31",
        }
    )
    assert request.from_ == dt.date(2024, 1, 1)
    dumped = request.model_dump(mode="json", by_alias=True)
    assert dumped["from"] == "2024-01-01"
    with_time = BackfillRequest.model_validate(
        {"instruments": [1], "interval": "day", "from": "2024-01-01T09:15:00", "to": "2024-01-02"}
    )
    assert with_time.from_ == dt.datetime(2024, 1, 1, 9, 15)
    for bad in (
        {"instruments": [], "interval": "minute", "from": "2024-01-01", "to": "2024-01-02"},
        {"instruments": ["INFY"], "interval": "minute", "from": "2024-01-01", "to": "2024-01-02"},
        {"instruments": [1], "interval": "week", "from": "2024-01-01", "to": "2024-01-02"},
        {"instruments": [1], "interval": "day", "from": "2024-01-03", "to": "2024-01-02"},
        {"instruments": [1], "interval": "day", "from": "2024-01-01", "to": "2024-01-02", "x": 1},
    ):
        with pytest.raises(ValueError, match="validation error"):
            BackfillRequest.model_validate(bad)
