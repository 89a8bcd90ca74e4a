"""Pure bar rules: partial-bar aggregation, closed-bar volume, gap seconds and quality."""

from __future__ import annotations

import datetime as dt
import random

import numpy as np
import pytest

from schemas.feed import Outage
from ticker_tasks.bars.aggregate import PartialBars, aggregate
from ticker_tasks.bars.closing import OutageWindows, bar_volume, quality
from ticker_tasks.kite.codec import TICK_DTYPE
from ticker_tasks.market.calendar import IST
from ticker_tasks.pipeline.state import NO_KEY, order_key_array

MINUTE = int(dt.datetime(2026, 11, 24, 10, 0, tzinfo=IST).timestamp())


def full_rows(spec: list[tuple[int, int, float, int, int]]) -> np.ndarray:
    """Rows from (token, exchange ts, price, cumulative volume, oi)."""
    rows = np.zeros(len(spec), dtype=TICK_DTYPE)
    rows["packet_length"] = 184
    rows["mode"] = 3
    for i, (token, ts, price, volume, oi) in enumerate(spec):
        rows[i]["instrument_token"] = token
        rows[i]["exchange_timestamp"] = ts
        rows[i]["last_price"] = price
        rows[i]["volume_traded"] = volume
        rows[i]["oi"] = oi
    return rows


def partial_bars(
    rows: np.ndarray, received: np.ndarray, index: np.ndarray, *, seq: int
) -> PartialBars:
    keys = order_key_array(rows, received, index, connection="A:0", seq=seq)
    return aggregate(rows, received, index, keys)


def test_partial_bars_group_by_instrument_and_minute_and_take_edges_by_order_key() -> None:
    spec = [
        (11, MINUTE + 5, 100.0, 1_000, 50),
        (11, MINUTE + 1, 101.0, 900, 0),
        (11, MINUTE + 59, 99.0, 1_200, 0),
        (11, MINUTE + 30, 104.0, 1_100, 60),
        (11, MINUTE + 61, 98.0, 1_300, 70),  # next minute
        (22, MINUTE + 10, 10.0, 5, 0),
    ]
    rows = full_rows(spec)
    bars = partial_bars(rows, np.full(len(spec), MINUTE + 90.0), np.arange(len(spec)), seq=3)
    assert bars.token.tolist() == [11, 11, 22]
    assert bars.minute.tolist() == [MINUTE, MINUTE + 60, MINUTE]
    assert bars.open.tolist() == [101.0, 98.0, 10.0]
    assert bars.close.tolist() == [99.0, 98.0, 10.0]
    assert bars.high.tolist() == [104.0, 98.0, 10.0]
    assert bars.low.tolist() == [99.0, 98.0, 10.0]
    assert bars.volume_max.tolist() == [1_200, 1_300, 5]
    assert bars.volume_min.tolist() == [900, 1_300, 5]
    assert bars.oi.tolist() == [60, 70, 0]
    keys = [[bytes(k[i]) for i in range(3)] for k in (bars.open_key, bars.oi_key, bars.close_key)]
    assert keys[1][2] == NO_KEY.encode()
    assert keys[0][0] < keys[1][0] < keys[2][0]


def test_partial_bars_do_not_depend_on_row_order() -> None:
    rng = random.Random(3)
    spec = [
        (
            rng.choice([7, 8, 9]),
            MINUTE + rng.randint(0, 179),
            rng.uniform(90, 110),
            rng.randint(1, 10**6),
            rng.randint(0, 9),
        )
        for _ in range(200)
    ]
    rows = full_rows(spec)
    received = np.array([MINUTE + 200.0 + rng.random() for _ in spec])
    index = np.arange(len(spec))
    first = partial_bars(rows, received, index, seq=1)
    perm = np.array(rng.sample(range(len(spec)), len(spec)))
    second = partial_bars(rows[perm], received[perm], index[perm], seq=1)
    for name in ("token", "minute", "open", "close", "high", "low", "volume_max", "volume_min"):
        assert np.array_equal(getattr(first, name), getattr(second, name)), name
    assert np.array_equal(first.oi, second.oi)
    for name in ("open_key", "close_key", "oi_key"):
        assert np.array_equal(getattr(first, name), getattr(second, name)), name


def test_volume_is_the_difference_of_cumulative_volumes_within_a_day() -> None:
    assert bar_volume(1_500, 1_200, MINUTE, (MINUTE - 180, 1_000)) == 500
    # Previous minute on another day: not a baseline; mid-session falls back to max - min.
    yesterday = MINUTE - 86_400
    assert bar_volume(1_500, 1_200, MINUTE, (yesterday, 9_000)) == 300
    # The session's first bar takes the whole day volume.
    open_minute = int(dt.datetime(2026, 11, 24, 9, 15, tzinfo=IST).timestamp())
    assert bar_volume(1_500, 1_200, open_minute, None) == 1_500
    night = int(dt.datetime(2026, 11, 24, 2, 0, tzinfo=IST).timestamp())
    assert bar_volume(1_500, 1_200, night, None) == 300
    assert bar_volume(0, 0, MINUTE, (MINUTE - 60, 10)) == 0


def outage(tokens: list[int], start: float, end: float) -> Outage:
    return Outage(
        account_id="A", connection="A:0", tokens=tokens, start=start, end=end, reason="closed"
    )


def test_gap_seconds_are_the_union_of_outages_within_the_minute() -> None:
    windows = OutageWindows.from_outages(
        [
            outage([1, 2], MINUTE + 10, MINUTE + 30),
            outage([1], MINUTE + 20, MINUTE + 40),  # overlaps the first
            outage([1], MINUTE - 100, MINUTE + 5),  # starts before the minute
            outage([1], MINUTE + 70, MINUTE + 80),  # next minute
        ]
    )
    assert windows.gap_seconds(1, MINUTE) == 35
    assert windows.gap_seconds(2, MINUTE) == 20
    assert windows.gap_seconds(3, MINUTE) == 0  # did not trade, no outage: no gap
    assert windows.gap_seconds(1, MINUTE + 60) == 10


@pytest.mark.parametrize(
    ("sources", "gap", "expected"),
    [
        (1, 0, "complete"),
        (1, 5, "gap"),
        (2, 0, "mock"),
        (3, 5, "mock"),
        (5, 0, "replayed"),
        (4, 3, "gap"),
    ],
)
def test_quality_flag(sources: int, gap: int, expected: str) -> None:
    assert quality(sources, gap) == expected
