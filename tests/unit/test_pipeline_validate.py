"""Vectorized tick validation: each reason rejects exactly its rows, good rows pass."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from ticker_tasks.kite.codec import TICK_DTYPE
from ticker_tasks.market.calendar import IST, TradingCalendar
from ticker_tasks.pipeline.validate import REASONS, Limits, calendar_session, validate

NOW = dt.datetime(2025, 1, 6, 10, 0, tzinfo=IST).timestamp()  # a Monday, 10:00 IST
OPEN = dt.datetime(2025, 1, 6, 9, 15, tzinfo=IST).timestamp()
CLOSE = dt.datetime(2025, 1, 6, 15, 30, tzinfo=IST).timestamp()
LIMITS = Limits(price_tolerance=0.001, clock_skew_s=5.0, max_age_s=900.0)
KNOWN = np.array([(t << 8) | 1 for t in range(1, 1000)], dtype=np.int64)


def known(tokens: np.ndarray) -> np.ndarray:
    return np.isin(tokens, KNOWN)


#: The fake calendar has a break shortly before NOW (recent enough not to be stale).
BREAK = (NOW - 200.0, NOW - 50.0)


def in_session(times: np.ndarray) -> np.ndarray:
    in_break = (times >= BREAK[0]) & (times < BREAK[1])
    return (times >= OPEN) & (times < CLOSE) & ~in_break


def good_rows(count: int) -> np.ndarray:
    """Full-mode rows that pass every check."""
    rows = np.zeros(count, dtype=TICK_DTYPE)
    rows["instrument_token"] = KNOWN[:count]
    rows["packet_length"] = 184
    rows["mode"] = 3
    rows["tradable"] = True
    rows["last_price"] = 100.0
    rows["open"], rows["high"], rows["low"], rows["close"] = 99.0, 101.0, 98.0, 99.5
    rows["volume_traded"] = 1000
    rows["exchange_timestamp"] = int(NOW) - 1
    rows["last_trade_time"] = int(NOW) - 2
    rows["bid_price"][:, 0] = 99.95
    rows["ask_price"][:, 0] = 100.05
    return rows


def run(rows: np.ndarray, source: str = "stream", **kwargs: object):
    received = np.full(rows.size, NOW, dtype=np.float64)
    options = {"known_tokens": known, "in_session": in_session, "now": NOW, "limits": LIMITS}
    options.update(kwargs)
    return validate(rows, received, source=source, **options)  # type: ignore[arg-type]


def test_good_rows_all_pass() -> None:
    rows = good_rows(10)
    out = run(rows)
    assert out.counts == {}
    assert out.good.size == 10
    assert out.rejected_index.size == 0
    assert np.array_equal(out.good, rows)


def _spoil(rows: np.ndarray, reason: str, idx: list[int]) -> None:
    if reason == "unknown_token":
        rows["instrument_token"][idx] = 7
    elif reason == "non_positive_price":
        rows["last_price"][idx[0]] = 0.0
        rows["last_price"][idx[1:]] = -3.0
    elif reason == "ohlc_inconsistent":
        rows["low"][idx[0]] = 102.0  # low > high
        rows["last_price"][idx[1:]] = 101.2  # above high beyond 0.1 %
    elif reason == "crossed_depth":
        rows["bid_price"][idx, 0] = 100.05
    elif reason == "future_timestamp":
        rows["exchange_timestamp"][idx] = int(NOW) + 60
    elif reason == "stale_timestamp":
        rows["exchange_timestamp"][idx] = int(NOW) - 3600
        rows["last_trade_time"][idx] = int(NOW) - 3600
    elif reason == "outside_session":
        rows["exchange_timestamp"][idx] = int(NOW) - 100
    else:  # pragma: no cover
        raise AssertionError(reason)


@pytest.mark.parametrize("reason", REASONS)
def test_each_reason_rejects_its_rows_and_keeps_the_others(reason: str) -> None:
    rows = good_rows(20)
    bad = [2, 5, 11]
    _spoil(rows, reason, bad)
    out = run(rows)
    assert out.counts == {reason: 3}
    assert out.rejected_index.tolist() == bad
    assert [REASONS[r] for r in out.rejected_reason.tolist()] == [reason] * 3
    assert out.good_index.tolist() == [i for i in range(20) if i not in bad]
    assert np.array_equal(out.good, rows[out.good_index])


def test_every_reason_in_one_batch_counts_each_row_once() -> None:
    rows = good_rows(40)
    for n, reason in enumerate(REASONS):
        _spoil(rows, reason, [n * 5, n * 5 + 1])
    out = run(rows)
    assert out.counts == {reason: 2 for reason in REASONS}
    assert out.good.size == 40 - 2 * len(REASONS)


def test_ltp_rows_skip_ohlc_depth_and_timestamp_checks() -> None:
    rows = np.zeros(3, dtype=TICK_DTYPE)
    rows["instrument_token"] = KNOWN[:3]
    rows["packet_length"] = 8
    rows["mode"] = 1
    rows["last_price"] = [1.0, 2.0, 0.0]
    out = run(rows)  # the session check uses the receive time (NOW: in session)
    assert out.counts == {"non_positive_price": 1}
    assert out.good_index.tolist() == [0, 1]


def test_tolerance_allows_last_price_slightly_outside_the_range() -> None:
    rows = good_rows(2)
    rows["last_price"] = [101.05, 101.2]  # +0.05 % and +0.2 % above high
    out = run(rows)
    assert out.counts == {"ohlc_inconsistent": 1}
    assert out.good_index.tolist() == [0]


def test_no_registry_rejects_everything_as_unknown() -> None:
    out = run(good_rows(4), known_tokens=None)
    assert out.counts == {"unknown_token": 4}
    assert out.good.size == 0


@pytest.mark.parametrize("source", ["mock", "replay"])
def test_mock_and_replay_skip_the_session_and_age_from_receive_time(source: str) -> None:
    rows = good_rows(3)
    night = dt.datetime(2025, 1, 5, 23, 0, tzinfo=IST).timestamp()  # a Sunday night
    rows["exchange_timestamp"] = int(night)
    received = np.full(3, night + 1, dtype=np.float64)
    out = validate(
        rows,
        received,
        source=source,
        known_tokens=known,
        in_session=in_session,
        now=NOW,
        limits=LIMITS,
    )
    assert out.counts == {}
    live = validate(
        rows,
        received,
        source="stream",
        known_tokens=known,
        in_session=in_session,
        now=NOW,
        limits=LIMITS,
    )
    assert live.counts == {"stale_timestamp": 3}


def test_empty_batch() -> None:
    out = run(np.zeros(0, dtype=TICK_DTYPE))
    assert out.counts == {}
    assert out.good.size == 0


def test_receive_times_must_match_rows() -> None:
    with pytest.raises(ValueError, match="receive times"):
        validate(
            good_rows(2),
            np.zeros(3),
            source="stream",
            known_tokens=known,
            in_session=in_session,
            now=NOW,
            limits=LIMITS,
        )


def test_calendar_session_is_vectorized_over_distinct_seconds() -> None:
    calendar = TradingCalendar(2025, 2025)
    check = calendar_session(calendar)
    sunday = dt.datetime(2025, 1, 5, 10, 0, tzinfo=IST).timestamp()
    before_2025 = dt.datetime(2024, 6, 3, 10, 0, tzinfo=IST).timestamp()
    times = np.array([NOW, NOW + 0.5, OPEN - 1, CLOSE, sunday, before_2025, OPEN])
    assert check(times).tolist() == [True, True, False, False, False, False, True]
