"""Pure logic of the candle maintenance jobs: comparison, budget, schedule period, settings."""

from __future__ import annotations

import datetime as dt

import pytest

from ticker_tasks.backfill.store import CandleRow
from ticker_tasks.bars.compare import StoredBar, Tolerance, agrees, compare_session
from ticker_tasks.bars.completeness import request_budget
from ticker_tasks.bars.retention import base_interval, cutoffs, range_keys, series_keys
from ticker_tasks.errors import ConfigError
from ticker_tasks.market.calendar import IST
from ticker_tasks.settings import load_settings
from ticker_tasks.tasks.candles import cron_period_s

T0 = dt.datetime(2025, 1, 6, 3, 45, tzinfo=dt.UTC)  # 09:15 IST
TOL = Tolerance(volume=0.01, price=0.0001)


def _ts(n: int) -> dt.datetime:
    return T0 + dt.timedelta(minutes=n)


def _rest(n: int, volume: int = 1000, high: float = 101.0, low: float = 99.0) -> CandleRow:
    return CandleRow(_ts(n), 100.0, high, low, 100.5, volume)


def _bar(
    n: int,
    volume: int = 1000,
    high: float = 101.0,
    low: float = 99.0,
    *,
    source: str = "stream",
    quality: str = "complete",
) -> StoredBar:
    return StoredBar(_ts(n), high, low, volume, source, quality)


@pytest.mark.parametrize(
    ("bar", "expected"),
    [
        (_bar(0), True),
        (_bar(0, volume=1010), True),  # 1 % off: the edge still agrees
        (_bar(0, volume=1011), False),
        (_bar(0, volume=989), False),
        (_bar(0, high=101.0101), True),  # 1 bp of 101
        (_bar(0, high=101.02), False),
        (_bar(0, low=98.98), False),
    ],
)
def test_a_bar_agrees_within_the_relative_tolerances(bar, expected):
    assert agrees(bar, _rest(0), TOL) is expected


def test_a_zero_volume_candle_needs_a_zero_volume_bar():
    assert agrees(_bar(0, volume=0), _rest(0, volume=0), TOL)
    assert not agrees(_bar(0, volume=1), _rest(0, volume=0), TOL)


def test_compare_sorts_every_minute_into_exactly_one_outcome():
    rest = [_rest(n) for n in range(7)]
    stored = {
        _ts(0): _bar(0),  # agrees, already complete
        _ts(1): _bar(1, quality="gap"),  # agrees: to mark complete
        _ts(2): _bar(2, quality="mock"),  # agrees: to mark complete
        _ts(3): _bar(3, volume=5, quality="replayed"),  # wrong: replaced
        _ts(4): _bar(4, source="backfill"),  # a REST candle that agrees: kept
        _ts(5): _bar(5, high=150.0, source="backfilled", quality="backfilled"),  # replaced
        # minute 6 missing: inserted
        _ts(9): _bar(9),  # no candle from Kite: extra, left alone
        _ts(10): _bar(10, source="backfill"),  # not a stream bar: not extra
    }
    result = compare_session(stored, rest, TOL)
    assert result.rest_minutes == 7
    assert result.confirmed == (_ts(0), _ts(1), _ts(2))
    assert result.to_mark == (_ts(1), _ts(2))
    assert [c.ts for c in result.replace] == [_ts(3), _ts(5)]
    assert [c.ts for c in result.insert] == [_ts(6)]
    assert result.kept == (_ts(4),)
    assert result.extra == (_ts(9),)
    assert [c.ts for c in result.writes] == [_ts(3), _ts(5), _ts(6)]
    assert result.completeness_pct == pytest.approx(100 * 3 / 7)


def test_completeness_is_unknown_without_candles_from_kite():
    result = compare_session({_ts(0): _bar(0)}, [], TOL)
    assert result.completeness_pct is None
    assert result.extra == (_ts(0),)


def test_request_budget_is_the_share_of_the_historical_rate_over_the_slot():
    settings = load_settings(completeness_budget_share=0.2, kite_rate_historical_per_s=3.0)
    assert request_budget(settings, 300) == 180
    assert request_budget(settings, 2) == 1
    assert request_budget(settings, 1) == 0
    assert request_budget(load_settings(completeness_budget_share=0.1), 10) == 3


@pytest.mark.parametrize(
    ("cron", "period_s"),
    [
        ("*/5 16-23 * * *", 300),
        ("*/5 16-23 * * 1-5", 300),
        ("0,10,15 * * * *", 300),
        ("30 2 * * *", 86_400),
        ("0 0 * * 0", 7 * 86_400),
        ("* 9-15 * * 1-5", 60),
    ],
)
def test_the_period_of_a_cron_is_its_shortest_gap(cron, period_s):
    assert cron_period_s(cron) == period_s


def test_retention_follows_the_base_interval_and_cuts_at_midnight_ist():
    assert base_interval("day+c") == base_interval("day") == "day"
    assert base_interval("minute+c+oi") == "minute"
    assert series_keys("minute") == ("minute", "minute+c")
    assert set(range_keys("minute")) == {"minute", "minute+oi", "minute+c", "minute+c+oi"}
    now = dt.datetime(2025, 3, 1, 20, 0, tzinfo=dt.UTC)  # 01:30 IST on 2 March
    assert cutoffs({"minute": 2}, now) == {"minute": dt.datetime(2025, 2, 28, tzinfo=IST)}


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TICKER_CANDLE_RETENTION_DAYS", '{"minutes": 30}'),
        ("TICKER_CANDLE_RETENTION_DAYS", '{"minute": 0}'),
        ("TICKER_COMPLETENESS_BUDGET_SHARE", "0"),
        ("TICKER_COMPLETENESS_BUDGET_SHARE", "1.5"),
        ("TICKER_SCHEDULE_CANDLES_PURGE", "61 * * * *"),
        ("TICKER_COMPLETENESS_VOLUME_TOLERANCE", "-0.1"),
    ],
)
def test_bad_candle_settings_are_refused(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable):
        load_settings()


def test_the_candle_job_budget_must_stay_below_the_soft_time_limit(monkeypatch):
    monkeypatch.setenv("TICKER_CANDLES_JOB_MAX_S", "100")
    with pytest.raises(ConfigError, match="candles_job_max_s"):
        load_settings()
