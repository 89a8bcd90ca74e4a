"""The trade path: a pure function of (seed, instrument, minute, slot), vectorized.

Every minute of every instrument is described by a few counter-based random draws
(:mod:`ticker_tasks.simulator.rng`), so any past minute can be regenerated on demand:

* a *reference price* per minute: the underlying's level (multi-scale piecewise-linear noise
  around its base price), carried to the future's expiry (``S * (1 + r T)``), or for options
  the Black-76 price of that forward with the smile volatility;
* the minute's trades: how many (``n``, 0 for an idle minute, every slot for indices), in
  which slots (evenly spread with a random phase), their prices (the first at the minute's
  open ``O``, the last at its close ``C``, one at the high ``H`` and one at the low ``L``, the
  rest inside ``[L, H]``) and quantities (whole lots, summing to the minute's volume).

Minute aggregates (O, H, L, C, volume, OI) therefore cost a handful of hashes per minute,
whatever the number of trades, and the streamer reproduces them exactly trade by trade.
Prices are integer ticks of 0.05.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ticker_tasks.simulator import rng
from ticker_tasks.simulator.catalog import UNDERLYINGS
from ticker_tasks.simulator.clock import MarketClock
from ticker_tasks.simulator.contracts import KIND_FUT, KIND_INDEX, KIND_OPT, TICKS_PER_RUPEE
from ticker_tasks.simulator.options import black76, forward_price, smile_vol
from ticker_tasks.simulator.universe import Universe, years_to_expiry

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
U64 = npt.NDArray[np.uint64]
Bools = npt.NDArray[np.bool_]

#: (knot spacing in minutes, amplitude as a share of the base price) of the level path.
PATH_SCALES: Final = (
    (1, 0.0004),
    (5, 0.0008),
    (30, 0.002),
    (240, 0.005),
    (1440, 0.01),
    (7200, 0.025),
    (43200, 0.06),
)
_STREAM_INTERMEDIATE: Final = 16
_STREAM_OI: Final = 7


@dataclass(slots=True)
class MinuteFields:
    """Per-(instrument, minute) description of the trades; arrays of one common shape.

    Attributes:
        n: Trades in the minute (0: no trade).
        off: Phase of the trade slots: trade ``r`` is in slot ``(r * S + off) // n``.
        open: Price of the first trade (ticks).
        close: Price of the last trade.
        high: Highest trade price.
        low: Lowest trade price.
        ext_h: Ticks the high lies above ``max(open, close)`` (0: no separate high trade).
        ext_l: Ticks the low lies below ``min(open, close)``.
        r_h: Rank of the trade at the high (when ``ext_h > 0``).
        r_l: Rank of the trade at the low (when ``ext_l > 0``).
        extra: Extra lots of the minute beyond one lot per trade.
        lot: Quantity unit (lot size; 1 for cash; 0 for indices, which carry no volume).
        volume: Quantity traded in the minute.
        sum4: ``open + high + low + close`` (the minute's turnover is ``volume * sum4 / 4``).
        oi: Open interest after the minute (0 outside F&O).
        p0: Reference price at the start of the minute (ticks, float).
        p1: Reference price at the end of the minute.
        noise: Noise amplitude of intermediate trades (ticks).
        key: Random key of the (instrument, minute).
        minute: Epoch minute.
    """

    n: I64
    off: I64
    open: I64
    close: I64
    high: I64
    low: I64
    ext_h: I64
    ext_l: I64
    r_h: I64
    r_l: I64
    extra: I64
    lot: I64
    volume: I64
    sum4: I64
    oi: I64
    p0: F64
    p1: F64
    noise: F64
    key: U64
    minute: I64

    def take(self, index: Any) -> MinuteFields:
        """The fields of a subset (1-D indexing)."""
        return MinuteFields(*(getattr(self, f.name)[index] for f in fields(self)))

    def ravel(self) -> MinuteFields:
        """The fields flattened to 1-D."""
        return MinuteFields(*(np.ravel(getattr(self, f.name)) for f in fields(self)))


def path_keys(seed_key: U64) -> U64:
    """Random key of each underlying's price path (order of :data:`UNDERLYINGS`)."""
    return np.concatenate(
        [rng.label_key(seed_key, "path", u.instrument_token) for u in UNDERLYINGS]
    )


def path_levels(keys: U64, paths: I64, minutes: I64) -> F64:
    """Underlying levels in rupees, shape ``(len(paths), len(minutes))``.

    The level is the base price times ``1 + path_vol * sum(amplitude * noise(scale))`` over
    :data:`PATH_SCALES`: piecewise-linear noise at scales from one minute to a month.
    """
    base = np.array([u.base_price for u in UNDERLYINGS], dtype=np.float64)[paths][:, None]
    vol = np.array([u.path_vol for u in UNDERLYINGS], dtype=np.float64)[paths][:, None]
    position = np.asarray(minutes, dtype=np.int64)[None, :]
    path_key = keys[paths]
    total = np.zeros((paths.size, position.size), dtype=np.float64)
    for number, (scale, amplitude) in enumerate(PATH_SCALES):
        scale_key = rng.stream(path_key, number)[:, None]
        total += amplitude * rng.value_noise(scale_key, position, scale)
    return base * (1.0 + vol * total)


class MarketModel:
    """Reference prices, minute fields and trades of a universe.

    Args:
        universe: The instruments.
        clock: Session rules and slot size.
    """

    def __init__(self, universe: Universe, clock: MarketClock) -> None:
        self.universe = universe
        self.clock = clock
        self.slots = clock.slots_per_minute
        self.path_keys = path_keys(universe.seed_key)

    # ----------------------------------------------------------------- reference prices

    def level(self, paths: I64, minutes: I64) -> F64:
        """Underlying levels in rupees, shape ``(len(paths), len(minutes))``."""
        return path_levels(self.path_keys, paths, minutes)

    def reference(self, rows: I64, minutes: I64) -> F64:
        """Reference prices in ticks (float), shape ``(len(rows), len(minutes))``."""
        u = self.universe
        paths = u.ints("path")[rows]
        unique, inverse = np.unique(paths, return_inverse=True)
        level = self.level(unique, minutes)[inverse.reshape(-1)]
        kind = u.ints("kind")[rows]
        ref = level.copy()
        derivative = np.flatnonzero((kind == KIND_FUT) | (kind == KIND_OPT))
        if derivative.size:
            years = years_to_expiry(
                u.ints("expiry_min")[rows[derivative]][:, None], minutes[None, :]
            )
            fwd = forward_price(level[derivative], years)
            ref[derivative] = fwd
            is_opt = kind[derivative] == KIND_OPT
            if is_opt.any():
                opt_rows = rows[derivative[is_opt]]
                strike = u.floats("strike")[opt_rows][:, None]
                under = u.ints("path")[opt_rows]
                vol = smile_vol(
                    _underlying_attr("atm_vol")[under][:, None],
                    _underlying_attr("skew")[under][:, None],
                    _underlying_attr("curvature")[under][:, None],
                    strike,
                    fwd[is_opt],
                )
                is_call = u.bools("is_call")[opt_rows][:, None]
                shape = fwd[is_opt].shape
                ref[derivative[is_opt]] = black76(
                    fwd[is_opt],
                    np.broadcast_to(strike, shape),
                    years[is_opt],
                    vol,
                    np.broadcast_to(is_call, shape),
                )
        return ref * TICKS_PER_RUPEE

    def close_ticks(self, rows: I64, minute: int) -> I64:
        """Closing price (the rounded reference price) at ``minute``."""
        ref = self.reference(rows, np.array([minute], dtype=np.int64))[:, 0]
        return np.maximum(np.floor(ref + 0.5), 1).astype(np.int64)

    # ----------------------------------------------------------------- minute fields

    def minute_fields(self, rows: I64, minutes: I64) -> MinuteFields:
        """Fields of every (row, minute) pair, shape ``(len(rows), len(minutes))``."""
        u = self.universe
        slots = self.slots
        rows = np.asarray(rows, dtype=np.int64)
        minutes = np.asarray(minutes, dtype=np.int64)
        both = _with_successors(minutes)
        ref = self.reference(rows, both)
        p0 = ref[:, np.searchsorted(both, minutes)]
        p1 = ref[:, np.searchsorted(both, minutes + 1)]
        grid = (rows.size, minutes.size)
        key = rng.combine(np.repeat(u.base[rows], minutes.size), np.tile(minutes, rows.size))
        d1, d2, d3 = (rng.stream(key, i).reshape(grid) for i in (1, 2, 3))
        key = key.reshape(grid)

        col = _columns(u, rows)
        listed = (minutes[None, :] >= col.listing_min) & (minutes[None, :] < col.expiry_min)
        trading = listed & self.clock.in_session(minutes)[None, :]
        trading &= rng.uniform16(d1, 0) >= col.p_idle
        is_index = col.kind == KIND_INDEX
        drawn = np.floor(col.liquidity * slots * (0.5 + rng.uniform16(d1, 1)) + 0.5)
        n = np.where(is_index, slots, np.clip(drawn.astype(np.int64), 1, slots))
        n = np.where(trading, n, 0)
        nn = np.maximum(n, 1)
        off = np.floor(rng.uniform16(d1, 2) * slots).astype(np.int64)

        def at(slot: I64) -> F64:
            return p0 + (p1 - p0) * (slot + 0.5) / slots

        noise = np.broadcast_to(col.noise, grid)
        first = off // nn
        last = ((nn - 1) * slots + off) // nn
        open_ = _round(at(first) + (rng.uniform16(d2, 0) - 0.5) * 2.0 * noise)
        close = _round(at(last) + (rng.uniform16(d2, 1) - 0.5) * 2.0 * noise)
        close = np.where(n == 1, open_, close)
        span = col.ext_max + 1
        ext_h = np.floor(rng.uniform16(d2, 2) * span).astype(np.int64)
        ext_l = np.floor(rng.uniform16(d2, 3) * span).astype(np.int64)
        ext_h = np.where(n <= 2, 0, ext_h)
        ext_l = np.where(n <= 2, 0, ext_l)
        high_side = rng.uniform16(d3, 2) < 0.5
        ext_l = np.where((n == 3) & high_side, 0, ext_l)
        ext_h = np.where((n == 3) & ~high_side, 0, ext_h)
        high = np.maximum(open_, close) + ext_h
        low = np.maximum(np.minimum(open_, close) - ext_l, 1)
        middle = np.maximum(n - 2, 1)
        r_h = 1 + np.floor(rng.uniform16(d3, 0) * middle).astype(np.int64)
        skip = np.floor(rng.uniform16(d3, 1) * np.maximum(n - 3, 1)).astype(np.int64)
        r_l = np.where(n >= 4, 1 + (r_h + skip) % middle, 1)
        extra = np.floor(rng.uniform16(d1, 3) * 2.0 * col.extra * n).astype(np.int64)
        lot = np.broadcast_to(np.where(is_index, 0, col.lot), grid)
        volume = lot * (n + extra)
        oi = self._open_interest(rows, minutes, col)
        zero = n == 0
        return MinuteFields(
            n=n,
            off=off,
            open=np.where(zero, 0, open_),
            close=np.where(zero, 0, close),
            high=np.where(zero, 0, high),
            low=np.where(zero, 0, low),
            ext_h=ext_h,
            ext_l=ext_l,
            r_h=r_h,
            r_l=r_l,
            extra=extra,
            lot=np.ascontiguousarray(lot),
            volume=np.where(zero, 0, volume),
            sum4=np.where(zero, 0, open_ + high + low + close),
            oi=oi,
            p0=p0,
            p1=p1,
            noise=np.ascontiguousarray(noise),
            key=key,
            minute=np.broadcast_to(minutes[None, :], grid).copy(),
        )

    def open_interest(self, rows: I64, minute: int) -> I64:
        """Open interest of rows at ``minute`` (0 outside F&O)."""
        minutes = np.array([minute], dtype=np.int64)
        return self._open_interest(rows, minutes, _columns(self.universe, rows))[:, 0]

    def _open_interest(self, rows: I64, minutes: I64, col: _Columns) -> I64:
        key = rng.stream(self.universe.base[rows], _STREAM_OI)[:, None]
        position = minutes[None, :]
        wave = 0.15 * rng.value_noise(key, position, 60) + 0.1 * rng.value_noise(
            key, position, 1440
        )
        lots = np.floor(col.oi_lots * (1.0 + wave) + 0.5).astype(np.int64)
        derivative = (col.kind == KIND_FUT) | (col.kind == KIND_OPT)
        return np.where(derivative, lots * col.lot, 0)

    # ----------------------------------------------------------------- trades

    def trade_slot(self, f: MinuteFields, r: I64) -> I64:
        """Slot (within the minute) of trade ``r``."""
        return (r * self.slots + f.off) // np.maximum(f.n, 1)

    def trade_price(self, f: MinuteFields, r: I64) -> I64:
        """Price (ticks) of trade ``r`` of each element (``0 <= r < n``)."""
        slot = self.trade_slot(f, r)
        x = f.p0 + (f.p1 - f.p0) * (slot + 0.5) / self.slots
        draw = rng.stream_many(f.key, r + _STREAM_INTERMEDIATE)
        mid = np.clip(_round(x + (rng.uniform16(draw, 0) - 0.5) * 2.0 * f.noise), f.low, f.high)
        price = np.where((r == f.r_l) & (f.ext_l > 0), f.low, mid)
        price = np.where((r == f.r_h) & (f.ext_h > 0), f.high, price)
        price = np.where(r == f.n - 1, f.close, price)
        return np.where(r == 0, f.open, price)

    def cum_quantity(self, f: MinuteFields, k: I64) -> I64:
        """Quantity of the first ``k`` trades of the minute."""
        return f.lot * (k + (f.extra * k) // np.maximum(f.n, 1))

    def trades_until(self, f: MinuteFields, slot: int) -> I64:
        """How many trades happen in slots ``<= slot`` of the minute."""
        k = -((f.off - (slot + 1) * f.n) // self.slots)
        return np.asarray(np.clip(k, 0, f.n), dtype=np.int64)

    def trade_in_slot(self, f: MinuteFields, slot: int) -> tuple[Bools, I64]:
        """(whether each element trades in ``slot``, the rank of that trade)."""
        r = -((f.off - slot * f.n) // self.slots)
        traded = (f.n > 0) & (r >= 0) & (r < f.n)
        traded &= (r * self.slots + f.off) // np.maximum(f.n, 1) == slot
        return traded, r

    def trade_epoch(self, f: MinuteFields, r: I64) -> I64:
        """Epoch second of trade ``r``."""
        return f.minute * 60 + (self.trade_slot(f, r) * 60) // self.slots


def _with_successors(minutes: I64) -> I64:
    """Sorted union of ``minutes`` and ``minutes + 1`` (fast path for sorted input)."""
    following = minutes + 1
    if minutes.size > 1 and not bool(np.all(minutes[1:] > minutes[:-1])):
        return np.unique(np.concatenate([minutes, following]))
    gap = np.ones(minutes.size, dtype=np.bool_)
    gap[:-1] = minutes[1:] != following[:-1]
    return np.sort(np.concatenate([minutes, following[gap]]))


def _round(x: F64) -> I64:
    """Round half up to whole ticks, at least one tick."""
    return np.maximum(np.floor(x + 0.5), 1).astype(np.int64)


def _underlying_attr(name: str) -> F64:
    return np.array([getattr(u, name) for u in UNDERLYINGS], dtype=np.float64)


@dataclass(frozen=True, slots=True)
class _Columns:
    """Per-row model parameters as ``(len(rows), 1)`` columns for grid broadcasting."""

    listing_min: I64
    expiry_min: I64
    kind: I64
    ext_max: I64
    lot: I64
    p_idle: F64
    liquidity: F64
    noise: F64
    extra: F64
    oi_lots: F64


def _columns(u: Universe, rows: I64) -> _Columns:
    def i(name: str) -> I64:
        return u.ints(name)[rows][:, None]

    def f(name: str) -> F64:
        return u.floats(name)[rows][:, None]

    return _Columns(
        listing_min=i("listing_min"),
        expiry_min=i("expiry_min"),
        kind=i("kind"),
        ext_max=i("ext_max"),
        lot=i("lot"),
        p_idle=f("p_idle"),
        liquidity=f("liquidity"),
        noise=f("noise"),
        extra=f("extra"),
        oi_lots=f("oi_lots"),
    )
