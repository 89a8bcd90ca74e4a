"""Day state of every instrument: live (advanced slot by slot) and closed-form (on demand).

:class:`MarketState` keeps, per universe row, what a tick or a quote shows: cumulative
volume and turnover of the IST day, day open/high/low, last trade, OI and its day range, and
the previous close. A row is computed from the trade path the first time it is needed
(:meth:`MarketState.ensure`) and from then on updated by :meth:`MarketState.advance`, so the
live state always equals the closed form :meth:`MarketState.compute` at the same slot.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Final

import numpy as np
import numpy.typing as npt

from ticker_tasks.simulator import rng
from ticker_tasks.simulator.clock import day_of_minute
from ticker_tasks.simulator.contracts import KIND_INDEX
from ticker_tasks.simulator.market import MarketModel, MinuteFields

I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

#: (row, minute) pairs evaluated per chunk by :meth:`MarketState.compute`.
CHUNK_PAIRS: Final = 24_000
_NO_LOW: Final = np.iinfo(np.int64).max
_DEPTH: Final = 5


@dataclass(slots=True)
class DayState:
    """Per-row day state (prices in ticks; ``turnover4`` = 4 x turnover in ticks).

    Attributes:
        volume: Quantity traded today.
        turnover4: Sum over today's minutes of ``volume * (open + high + low + close)``.
        open: First trade price today (0 before it).
        high: Highest trade price today (0 before the first trade).
        low: Lowest trade price today (0 before the first trade).
        last: Last trade price (the previous close before the first trade).
        ltq: Quantity of the last trade.
        ltt: Epoch second of the last trade (previous close time before the first trade).
        oi: Open interest.
        oi_high: Highest OI today (including the opening OI).
        oi_low: Lowest OI today.
        close: Previous close.
        traded: Whether the row traded today.
    """

    volume: I64
    turnover4: I64
    open: I64
    high: I64
    low: I64
    last: I64
    ltq: I64
    ltt: I64
    oi: I64
    oi_high: I64
    oi_low: I64
    close: I64
    traded: Bools

    @classmethod
    def zeros(cls, size: int) -> DayState:
        """A state of ``size`` rows, all zero."""

        def z() -> I64:
            return np.zeros(size, dtype=np.int64)

        return cls(
            z(), z(), z(), z(), z(), z(), z(), z(), z(), z(), z(), z(), np.zeros(size, np.bool_)
        )

    def take(self, rows: I64) -> DayState:
        """Copy of a subset."""
        return DayState(*(getattr(self, f.name)[rows] for f in fields(self)))

    def put(self, rows: I64, other: DayState) -> None:
        """Overwrite a subset with ``other``."""
        for f in fields(self):
            getattr(self, f.name)[rows] = getattr(other, f.name)

    def extend(self, size: int) -> None:
        """Grow to ``size`` rows (new rows zero)."""
        for f in fields(self):
            column = getattr(self, f.name)
            if column.size < size:
                setattr(
                    self,
                    f.name,
                    np.concatenate([column, np.zeros(size - column.size, column.dtype)]),
                )

    def average_price(self) -> npt.NDArray[np.float64]:
        """Volume-weighted average price in rupees (0 without volume)."""
        volume = self.volume.astype(np.float64)
        ticks = np.divide(
            self.turnover4.astype(np.float64),
            4.0 * volume,
            out=np.zeros_like(volume),
            where=volume > 0,
        )
        return ticks / 20.0


@dataclass(slots=True)
class SlotTrades:
    """Trades of one slot among initialised rows.

    Attributes:
        slot: Global slot index.
        rows: Universe rows that traded.
        price: Trade price (ticks).
        quantity: Trade quantity.
    """

    slot: int
    rows: I64
    price: I64
    quantity: I64


class MarketState:
    """Live day state of the whole universe.

    Args:
        model: The market model.
        slot: The state starts as of this slot (rows computed lazily).
    """

    def __init__(self, model: MarketModel, slot: int) -> None:
        self.model = model
        self.slots = model.slots
        self.slot = slot
        self.day = day_of_minute(slot // self.slots)
        size = model.universe.size
        self.state = DayState.zeros(size)
        self.ready = np.zeros(size, dtype=np.bool_)
        self._block: MinuteFields | None = None
        self._block_key: tuple[int, int] = (-1, -1)

    # ----------------------------------------------------------------- closed form

    def opening(self, rows: I64, day: int) -> DayState:
        """State of rows at the start of ``day`` (before any trade)."""
        clock = self.model.clock
        previous = clock.previous_close_minute(day)
        out = DayState.zeros(rows.size)
        if rows.size == 0:
            return out
        out.close = self.model.close_ticks(rows, previous)
        out.last = out.close.copy()
        out.ltt = np.full(rows.size, previous * 60, dtype=np.int64)
        out.oi = self.model.open_interest(rows, previous - 1)
        out.oi_high = out.oi.copy()
        out.oi_low = out.oi.copy()
        return out

    def compute(self, rows: I64, slot: int) -> DayState:
        """Closed-form state of rows after every trade in slots ``<= slot`` of that day."""
        rows = np.asarray(rows, dtype=np.int64)
        minute, in_minute = divmod(slot, self.slots)
        day = day_of_minute(minute)
        out = self.opening(rows, day)
        start, end = self.model.clock.session_bounds(day)
        minutes = self.model.clock.session_minutes(start, min(minute, end) - 1)
        if minutes.size:
            step = max(1, CHUNK_PAIRS // minutes.size)
            for lo in range(0, rows.size, step):
                part = np.arange(lo, min(lo + step, rows.size))
                fields_ = self.model.minute_fields(rows[part], minutes)
                _apply_minutes(self.model, out, part, fields_)
        if start <= minute < end:
            fields_ = self.model.minute_fields(rows, np.array([minute], dtype=np.int64)).ravel()
            self._apply_partial(out, fields_, in_minute)
        return out

    def _apply_partial(self, out: DayState, f: MinuteFields, in_minute: int) -> None:
        """Add the trades of slots ``<= in_minute`` of the current minute."""
        k = self.model.trades_until(f, in_minute)
        hit = np.flatnonzero(k > 0)
        if hit.size == 0:
            return
        f = f.take(hit)
        k = k[hit]
        high = np.zeros(hit.size, dtype=np.int64)
        low = np.full(hit.size, _NO_LOW, dtype=np.int64)
        for r in range(int(k.max())):
            ranks = np.full(hit.size, r, dtype=np.int64)
            price = self.model.trade_price(f, ranks)
            seen = r < k
            high = np.where(seen, np.maximum(high, price), high)
            low = np.where(seen, np.minimum(low, price), low)
        last_rank = k - 1
        quantity = self.model.cum_quantity(f, k)
        _merge(
            out,
            hit,
            open_=f.open,
            high=high,
            low=low,
            last=self.model.trade_price(f, last_rank),
            ltq=quantity - self.model.cum_quantity(f, last_rank),
            ltt=self.model.trade_epoch(f, last_rank),
            volume=quantity,
            turnover4=quantity * f.sum4,
            oi=f.oi,
        )

    # ----------------------------------------------------------------- live

    def grow(self) -> None:
        """Follow the universe after a listing (new rows start uncomputed)."""
        size = self.model.universe.size
        if self.ready.size < size:
            self.state.extend(size)
            self.ready = np.concatenate([self.ready, np.zeros(size - self.ready.size, np.bool_)])

    def ensure(self, rows: I64) -> None:
        """Compute the rows that are not live yet (as of :attr:`slot`)."""
        self.grow()
        rows = np.asarray(rows, dtype=np.int64)
        missing = rows[~self.ready[rows]]
        if missing.size:
            missing = np.unique(missing)
            self.state.put(missing, self.compute(missing, self.slot))
            self.ready[missing] = True

    def snapshot(self, rows: I64) -> DayState:
        """Current state of rows (computed if needed)."""
        self.ensure(rows)
        return self.state.take(np.asarray(rows, dtype=np.int64))

    def invalidate(self) -> None:
        """Forget every live row (they are recomputed when next needed)."""
        self.ready[:] = False

    def block(self, minute: int) -> MinuteFields:
        """Minute fields of every universe row for ``minute`` (cached per minute)."""
        key = (minute, self.model.universe.version)
        if self._block is None or self._block_key != key:
            rows = np.arange(self.model.universe.size, dtype=np.int64)
            minutes = np.array([minute], dtype=np.int64)
            self._block = self.model.minute_fields(rows, minutes).ravel()
            self._block_key = key
        return self._block

    def advance(self, slot: int) -> SlotTrades:
        """Apply the trades of ``slot`` (the one after :attr:`slot`) to the live rows."""
        self.grow()
        minute, in_minute = divmod(slot, self.slots)
        day = day_of_minute(minute)
        if day != self.day:
            self.day = day
            first = self.model.clock.session_bounds(day)[0] * self.slots
            if slot <= first:
                everything = np.arange(self.ready.size, dtype=np.int64)
                self.state.put(everything, self.opening(everything, day))
                self.ready[:] = True
            else:
                self.invalidate()
        self.slot = slot
        f = self.block(minute)
        traded, rank = self.model.trade_in_slot(f, in_minute)
        rows = np.flatnonzero(traded & self.ready[: traded.size]).astype(np.int64)
        if rows.size == 0:
            empty = np.zeros(0, dtype=np.int64)
            return SlotTrades(slot, empty, empty, empty)
        f = f.take(rows)
        r = rank[rows]
        price = self.model.trade_price(f, r)
        quantity = self.model.cum_quantity(f, r + 1) - self.model.cum_quantity(f, r)
        _merge(
            self.state,
            rows,
            open_=f.open,
            high=price,
            low=price,
            last=price,
            ltq=quantity,
            ltt=self.model.trade_epoch(f, r),
            volume=quantity,
            turnover4=quantity * f.sum4,
            oi=f.oi,
        )
        return SlotTrades(slot, rows, price, quantity)

    # ----------------------------------------------------------------- order book

    def depth(self, rows: I64, last: I64) -> dict[str, I64]:
        """Five-level book around ``last`` at the current slot (prices in ticks).

        Returns:
            ``bid_price``, ``bid_qty``, ``bid_orders``, ``ask_price``, ``ask_qty``,
            ``ask_orders`` (shape ``(len(rows), 5)``), ``total_buy`` and ``total_sell``.
            Index rows get an empty book. Best bid is always below best ask.
        """
        u = self.model.universe
        key = rng.combine(u.base[rows], np.full(rows.size, self.slot, dtype=np.int64))
        draws = [rng.stream(key, 40 + i) for i in range(6)]
        lanes = np.stack([rng.uniform16(d, lane) for d in draws for lane in range(4)], axis=1)
        lot = np.maximum(u.ints("lot")[rows], 1)[:, None]
        level = np.arange(_DEPTH, dtype=np.int64)[None, :]
        bid_gap = 1 + np.floor(lanes[:, 0] * 2).astype(np.int64)[:, None]
        ask_gap = 1 + np.floor(lanes[:, 1] * 2).astype(np.int64)[:, None]
        bid_price = last[:, None] - bid_gap - level
        ask_price = last[:, None] + ask_gap + level
        bid_qty = lot * (1 + np.floor(lanes[:, 2:7] * 40).astype(np.int64))
        ask_qty = lot * (1 + np.floor(lanes[:, 7:12] * 40).astype(np.int64))
        bid_orders = 1 + np.floor(lanes[:, 12:17] * 12).astype(np.int64)
        ask_orders = 1 + np.floor(lanes[:, 17:22] * 12).astype(np.int64)
        empty = (bid_price <= 0) | (u.ints("kind")[rows] == KIND_INDEX)[:, None]
        bid_price, bid_qty, bid_orders = (
            np.where(empty, 0, a) for a in (bid_price, bid_qty, bid_orders)
        )
        no_ask = np.broadcast_to((u.ints("kind")[rows] == KIND_INDEX)[:, None], ask_price.shape)
        ask_price, ask_qty, ask_orders = (
            np.where(no_ask, 0, a) for a in (ask_price, ask_qty, ask_orders)
        )
        scale = 5 + np.floor(lanes[:, 22:24] * 20).astype(np.int64)
        return {
            "bid_price": bid_price,
            "bid_qty": bid_qty,
            "bid_orders": bid_orders,
            "ask_price": ask_price,
            "ask_qty": ask_qty,
            "ask_orders": ask_orders,
            "total_buy": bid_qty.sum(axis=1) * scale[:, 0],
            "total_sell": ask_qty.sum(axis=1) * scale[:, 1],
        }


def _apply_minutes(model: MarketModel, out: DayState, part: I64, f: MinuteFields) -> None:
    """Fold complete minutes (grid ``(len(part), M)``) into ``out`` rows ``part``."""
    traded = f.n > 0
    any_trade = traded.any(axis=1)
    if not any_trade.any():
        return
    width = traded.shape[1]
    first = np.argmax(traded, axis=1)
    last = width - 1 - np.argmax(traded[:, ::-1], axis=1)
    line = np.arange(part.size)
    high = np.where(traded, f.high, 0).max(axis=1)
    low = np.where(traded, f.low, _NO_LOW).min(axis=1)
    oi_traded = np.where(traded, f.oi, -1)
    oi_high = oi_traded.max(axis=1)
    oi_low = np.where(traded, f.oi, _NO_LOW).min(axis=1)
    final = f.take((line, last))
    n_last = final.n
    quantity = model.cum_quantity(final, n_last) - model.cum_quantity(final, n_last - 1)
    volume = f.volume.sum(axis=1)
    hit = np.flatnonzero(any_trade)
    _merge(
        out,
        part[hit],
        open_=f.open[line, first][hit],
        high=high[hit],
        low=low[hit],
        last=final.close[hit],
        ltq=quantity[hit],
        ltt=model.trade_epoch(final, n_last - 1)[hit],
        volume=volume[hit],
        turnover4=(f.volume * f.sum4).sum(axis=1)[hit],
        oi=final.oi[hit],
        oi_high=oi_high[hit],
        oi_low=oi_low[hit],
    )


def _merge(
    out: DayState,
    rows: I64,
    *,
    open_: I64,
    high: I64,
    low: I64,
    last: I64,
    ltq: I64,
    ltt: I64,
    volume: I64,
    turnover4: I64,
    oi: I64,
    oi_high: I64 | None = None,
    oi_low: I64 | None = None,
) -> None:
    """Fold later trades (a minute range, a partial minute or one slot) into ``out`` rows."""
    fresh = ~out.traded[rows]
    out.open[rows] = np.where(fresh, open_, out.open[rows])
    out.high[rows] = np.where(fresh, high, np.maximum(out.high[rows], high))
    out.low[rows] = np.where(fresh, low, np.minimum(out.low[rows], low))
    out.last[rows] = last
    out.ltq[rows] = ltq
    out.ltt[rows] = ltt
    out.volume[rows] += volume
    out.turnover4[rows] += turnover4
    out.oi[rows] = oi
    out.oi_high[rows] = np.maximum(out.oi_high[rows], oi if oi_high is None else oi_high)
    out.oi_low[rows] = np.minimum(out.oi_low[rows], oi if oi_low is None else oi_low)
    out.traded[rows] = True
