"""Invariants of the simulator's market model (no sockets: the model is stepped directly)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest
from vollib.black.implied_volatility import implied_volatility

from ticker_tasks.simulator.catalog import SEGMENT_INDICES
from ticker_tasks.simulator.cli import build_parser, config_from_args
from ticker_tasks.simulator.config import SimulatorConfig
from ticker_tasks.simulator.context import SimContext, build_context
from ticker_tasks.simulator.contracts import KIND_FUT, KIND_OPT, TICKS_PER_RUPEE
from ticker_tasks.simulator.history import INTERVALS, HistoryError, candles, check_range
from ticker_tasks.simulator.options import black76, erfc, forward_price, smile_vol
from ticker_tasks.simulator.state import MarketState

IST_TZ = timezone(timedelta(hours=5, minutes=30))
# Wednesday 2026-01-14 10:00 IST.
T0 = datetime(2026, 1, 14, 4, 30, tzinfo=UTC).timestamp()


def make(seed: int = 7, size: int = 1500, tps: float = 1.0, follow: bool = False) -> SimContext:
    config = SimulatorConfig(
        seed=seed, universe_size=size, ticks_per_second=tps, follow_calendar=follow
    )
    return build_context(config, time_source=lambda: T0)


def row_of(ctx: SimContext, exchange: str, symbol: str) -> int:
    return ctx.universe.index_of_symbol(exchange, symbol)


def far_otm_option(ctx: SimContext) -> int:
    u = ctx.universe
    options = np.flatnonzero((u.ints("kind") == KIND_OPT) & u.active)
    return int(options[np.argmax(u.floats("p_idle")[options])])


def test_same_seed_reproduces_universe_and_trade_path():
    a, b, c = make(seed=7), make(seed=7), make(seed=8)
    assert a.universe.csv_dump() == b.universe.csv_dump()
    rows = np.arange(0, a.universe.size, 37)
    minutes = np.arange(a.state.slot // 60 - 90, a.state.slot // 60)
    fa = a.model.minute_fields(rows, minutes)
    fb = b.model.minute_fields(rows, minutes)
    fc = c.model.minute_fields(rows, minutes)
    for name in ("n", "open", "high", "low", "close", "volume", "oi"):
        assert np.array_equal(getattr(fa, name), getattr(fb, name)), name
    assert not np.array_equal(fa.close, fc.close)


def test_universe_reaches_30000_instruments_with_the_size_flag():
    args = build_parser().parse_args(["--universe-size", "30000", "--rest-port", "0"])
    ctx = build_context(config_from_args(args), time_source=lambda: T0)
    u = ctx.universe
    assert u.active_count() >= 30_000
    tokens = u.ints("token")[u.active]
    assert len(set(tokens.tolist())) == tokens.size
    assert np.array_equal(
        tokens, (u.ints("exchange_token")[u.active] << 8) | u.ints("segment")[u.active]
    )
    for symbol, token in (
        ("NIFTY 50", 256265),
        ("NIFTY BANK", 260105),
        ("NIFTY FIN SERVICE", 257801),
    ):
        row = row_of(ctx, "NSE", symbol)
        assert u.int_at("token", row) == token
        assert token & 0xFF == SEGMENT_INDICES
    assert u.int_at("token", row_of(ctx, "NSE", "INFY")) == 408065
    lots = {"NIFTY": 75, "BANKNIFTY": 35, "FINNIFTY": 65}
    steps = {"NIFTY": 50.0, "BANKNIFTY": 100.0, "FINNIFTY": 50.0}
    for name, lot in lots.items():
        rows = [
            r
            for r in range(u.size)
            if u.underlying(r).symbol == name and u.int_at("kind", r) == KIND_OPT
        ]
        assert {u.int_at("lot", r) for r in rows} == {lot}
        strikes = sorted({u.float_at("strike", r) for r in rows})
        assert set(np.diff(strikes).tolist()) == {steps[name]}
        expiries = {u.expiry_date[r] for r in rows}
        assert len(expiries) >= 6  # weekly + monthly
        assert any(
            u.tradingsymbol[r].endswith("FUT")
            for r in range(u.size)
            if u.underlying(r).symbol == name
        )


def test_volume_never_decreases_and_best_bid_below_best_ask():
    ctx = make()
    state = ctx.state
    rows = np.arange(ctx.universe.size, dtype=np.int64)
    state.ensure(rows)
    previous = state.state.volume.copy()
    for slot in range(state.slot + 1, state.slot + 150):
        state.advance(slot)
        volume = state.state.volume
        assert np.all(volume >= previous)
        previous = volume.copy()
    book = state.depth(rows, state.state.last)
    tradable = ctx.universe.ints("segment") != SEGMENT_INDICES
    bid, ask = book["bid_price"][:, 0], book["ask_price"][:, 0]
    assert np.all(bid[tradable] < ask[tradable])
    assert np.all(np.diff(book["bid_price"][tradable], axis=1) <= 0)
    assert np.all(np.diff(book["ask_price"][tradable], axis=1) > 0)
    derivatives = np.isin(ctx.universe.ints("kind"), [KIND_FUT, KIND_OPT])
    oi = state.state
    assert np.all(oi.oi[derivatives] > 0)
    assert np.all((oi.oi_low <= oi.oi) & (oi.oi <= oi.oi_high))
    assert np.all(oi.oi[derivatives] % ctx.universe.ints("lot")[derivatives] == 0)


@pytest.mark.parametrize(("tps", "follow"), [(1.0, False), (0.1, False), (2.0, True)])
def test_live_state_equals_closed_form(tps: float, follow: bool):
    ctx = make(tps=tps, follow=follow)
    state = ctx.state
    rows = np.arange(ctx.universe.size, dtype=np.int64)
    state.ensure(rows[::2])
    start = state.slot
    for slot in range(start + 1, start + 3 * ctx.clock.slots_per_minute + 5):
        state.advance(slot)
    state.ensure(rows)
    expected = state.compute(rows, state.slot)
    for name in (
        "volume",
        "turnover4",
        "open",
        "high",
        "low",
        "last",
        "ltq",
        "ltt",
        "oi",
        "oi_high",
        "oi_low",
        "close",
    ):
        assert np.array_equal(getattr(state.state, name), getattr(expected, name)), name


def _stream(
    ctx: SimContext, rows: list[int], minutes: int
) -> dict[int, list[tuple[int, int, int]]]:
    """Run the live state from a minute boundary; collect (epoch, price, qty) per row."""
    slots = ctx.clock.slots_per_minute
    first = (ctx.state.slot // slots + 1) * slots
    state = MarketState(ctx.model, first - 1)
    state.ensure(np.asarray(rows, dtype=np.int64))
    seen: dict[int, list[tuple[int, int, int]]] = {r: [] for r in rows}
    for slot in range(first, first + minutes * slots):
        trades = state.advance(slot)
        for r, p, q in zip(
            trades.rows.tolist(), trades.price.tolist(), trades.quantity.tolist(), strict=True
        ):
            if r in seen:
                seen[r].append((ctx.clock.slot_epoch(slot), p, q))
    return seen


def test_candles_are_the_streamed_trades_and_idle_minutes_have_none():
    ctx = make(seed=3)
    liquid = row_of(ctx, "NSE", "INFY")
    index = row_of(ctx, "NSE", "NIFTY 50")
    illiquid = far_otm_option(ctx)
    minutes = 25
    stream = _stream(ctx, [liquid, index, illiquid], minutes)
    slots = ctx.clock.slots_per_minute
    first_minute = ctx.state.slot // slots + 1
    for row in (liquid, index, illiquid):
        built: dict[int, list[int]] = {}
        for epoch, price, qty in stream[row]:
            minute = epoch // 60
            bar = built.setdefault(minute, [price, price, price, price, 0])
            bar[1] = max(bar[1], price)
            bar[2] = min(bar[2], price)
            bar[3] = price
            bar[4] += qty
        served = candles(
            ctx.model,
            row,
            "minute",
            first_minute * 60,
            (first_minute + minutes - 1) * 60,
            first_minute + minutes - 1,
        )
        got = {
            int(m): [int(o), int(h), int(lo), int(c), int(v)]
            for m, o, h, lo, c, v in zip(
                served.start,
                served.open,
                served.high,
                served.low,
                served.close,
                served.volume,
                strict=True,
            )
        }
        assert got == built, ctx.universe.tradingsymbol[row]
        if row == illiquid:
            assert len(got) < minutes  # minutes without trades have no candle
        if row == index:
            assert len(got) == minutes and all(v[4] == 0 for v in got.values())
    # A 5-minute candle aggregates the minute candles.
    five = candles(
        ctx.model,
        liquid,
        "5minute",
        first_minute * 60,
        (first_minute + minutes - 1) * 60,
        first_minute + minutes - 1,
    )
    one = candles(
        ctx.model,
        liquid,
        "minute",
        int(five.start[1]) * 60,
        (int(five.start[1]) + 4) * 60,
        first_minute + minutes,
    )
    assert (
        five.volume[1] == one.volume.sum()
        and five.high[1] == one.high.max()
        and five.low[1] == one.low.min()
    )
    assert five.open[1] == one.open[0] and five.close[1] == one.close[-1]


def test_history_caps_and_intervals():
    assert set(INTERVALS) == {
        "minute",
        "3minute",
        "5minute",
        "10minute",
        "15minute",
        "30minute",
        "60minute",
        "day",
    }
    day = 86400
    for interval, cap in (
        ("minute", 60),
        ("3minute", 100),
        ("5minute", 100),
        ("10minute", 100),
        ("15minute", 200),
        ("30minute", 200),
        ("60minute", 400),
        ("day", 2000),
    ):
        check_range(interval, 0, cap * day)
        with pytest.raises(HistoryError):
            check_range(interval, 0, (cap + 1) * day)
    with pytest.raises(HistoryError):
        check_range("2minute", 0, day)


def test_follow_calendar_trades_only_in_session():
    ctx = make(follow=True)
    rows = np.arange(ctx.universe.size, dtype=np.int64)
    session_day = ctx.state.slot // 60 // 1440
    # 08:00 IST (before the open) and 10:00 IST of the same day.
    before = np.array([session_day * 1440 + 8 * 60 - 330], dtype=np.int64)
    during = np.array([session_day * 1440 + 10 * 60 - 330], dtype=np.int64)
    assert ctx.model.minute_fields(rows, before).n.sum() == 0
    assert ctx.model.minute_fields(rows, during).n.sum() > 0


def test_black76_price_gives_back_the_smile_volatility():
    forward = np.full(9, 25_000.0)
    strikes = np.linspace(22_000.0, 28_000.0, 9)
    years = np.full(9, 20 / 365)
    vol = smile_vol(np.full(9, 0.13), np.full(9, -0.35), np.full(9, 1.5), strikes, forward)
    for is_call, flag in ((True, "c"), (False, "p")):
        price = black76(forward, strikes, years, vol, np.full(9, is_call))
        for i in range(9):
            iv = implied_volatility(
                float(price[i]), 25_000.0, float(strikes[i]), 0.065, float(years[i]), flag
            )
            assert abs(iv - vol[i]) < 1e-4


def test_model_option_prices_are_black76_off_the_future():
    ctx = make()
    u = ctx.universe
    minute = np.array([ctx.state.slot // 60], dtype=np.int64)
    options = np.flatnonzero((u.ints("kind") == KIND_OPT) & u.active)
    near = options[np.argsort(np.abs(u.floats("p_idle")[options]))[:12]]
    ref = ctx.model.reference(near, minute)[:, 0] / TICKS_PER_RUPEE
    level = ctx.model.level(u.ints("path")[near], minute)[:, 0]
    years = (u.ints("expiry_min")[near] - minute[0]) / (365 * 1440)
    fwd = forward_price(level, years)
    for i, row in enumerate(near.tolist()):
        under = u.underlying(row)
        expected = smile_vol(
            np.array([under.atm_vol]),
            np.array([under.skew]),
            np.array([under.curvature]),
            np.array([u.float_at("strike", row)]),
            np.array([fwd[i]]),
        )[0]
        flag = "c" if u.bool_at("is_call", row) else "p"
        iv = implied_volatility(
            float(ref[i]), float(fwd[i]), u.float_at("strike", row), 0.065, float(years[i]), flag
        )
        assert abs(iv - expected) < 1e-4


def test_erfc_matches_math():
    xs = np.linspace(-8.0, 8.0, 4001)
    ours = erfc(xs)
    theirs = np.array([math.erfc(x) for x in xs])
    assert np.allclose(ours, theirs, rtol=1e-13, atol=1e-300)


@pytest.mark.parametrize(
    ("hour", "minute", "follow"),
    [(23, 58, False), (9, 13, True), (15, 28, True)],
)
def test_day_rollover_and_session_edges_keep_live_equal_to_closed_form(hour, minute, follow):
    start = datetime(2026, 1, 14, hour, minute, 30, tzinfo=IST_TZ).timestamp()
    ctx = build_context(
        SimulatorConfig(seed=5, universe_size=300, follow_calendar=follow),
        time_source=lambda: start,
    )
    state = ctx.state
    rows = np.arange(ctx.universe.size, dtype=np.int64)
    state.ensure(rows)
    volume_before = state.state.volume.copy()
    for slot in range(state.slot + 1, state.slot + 5 * 60):
        state.advance(slot)
    state.ensure(rows)
    expected = state.compute(rows, state.slot)
    for name in (
        "volume",
        "open",
        "high",
        "low",
        "last",
        "ltt",
        "oi",
        "oi_high",
        "oi_low",
        "close",
    ):
        assert np.array_equal(getattr(state.state, name), getattr(expected, name)), name
    if not follow:  # a new IST day started: volumes restarted from zero
        assert state.state.volume.sum() < volume_before.sum()
    if (hour, minute) == (9, 13):  # the session opened: trading started
        assert state.state.volume.sum() > volume_before.sum() == 0
    if (hour, minute) == (15, 28):  # the session closed: nothing trades after 15:30
        after = state.state.volume.copy()
        for slot in range(state.slot + 1, state.slot + 120):
            assert state.advance(slot).rows.size == 0
        assert np.array_equal(state.state.volume, after)
