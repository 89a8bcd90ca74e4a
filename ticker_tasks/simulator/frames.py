"""Tick rows for the codec: the live state of instruments in the packet layout of each mode.

Packet length by mode: ``ltp`` 8 bytes; ``quote`` 44 bytes (28 for indices, segment 9);
``full`` 184 bytes (32 for indices). Frames are built with
:func:`ticker_tasks.kite.codec.encode` from these rows.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from ticker_tasks.kite.codec import TICK_DTYPE
from ticker_tasks.simulator.catalog import SEGMENT_INDICES
from ticker_tasks.simulator.contracts import TICKS_PER_RUPEE
from ticker_tasks.simulator.state import MarketState

I64 = npt.NDArray[np.int64]

MODE_CODES: Final[dict[str, int]] = {"ltp": 1, "quote": 2, "full": 3}
MODE_NAMES: Final[dict[int, str]] = {v: k for k, v in MODE_CODES.items()}
#: Paise per tick (0.05 rupee): the raw unit of the index packet's price change.
_PAISE_PER_TICK: Final = 5


def packet_lengths(is_index: npt.NDArray[np.bool_], modes: I64) -> I64:
    """Packet length of each (instrument, mode)."""
    quote = np.where(is_index, 28, 44)
    full = np.where(is_index, 32, 184)
    return np.where(modes == 1, 8, np.where(modes == 2, quote, full)).astype(np.int64)


def build_rows(state: MarketState, rows: I64, modes: I64) -> npt.NDArray[np.void]:
    """Rows of :data:`TICK_DTYPE` with the live state of ``rows`` in their ``modes``.

    Args:
        state: Live market state (rows must be computed: ``state.ready[rows]``).
        rows: Universe rows.
        modes: Mode code per row (1 ltp, 2 quote, 3 full).

    Returns:
        One tick row per instrument, ready for ``encode``.
    """
    universe = state.model.universe
    s = state.state
    out = np.zeros(rows.size, dtype=TICK_DTYPE)
    segment = universe.ints("segment")[rows]
    is_index = segment == SEGMENT_INDICES
    out["instrument_token"] = universe.ints("token")[rows]
    out["segment"] = segment
    out["mode"] = modes
    out["packet_length"] = packet_lengths(is_index, modes)
    out["tradable"] = ~is_index
    last = s.last[rows]
    close = s.close[rows]
    out["last_price"] = last / TICKS_PER_RUPEE
    out["open"] = s.open[rows] / TICKS_PER_RUPEE
    out["high"] = s.high[rows] / TICKS_PER_RUPEE
    out["low"] = s.low[rows] / TICKS_PER_RUPEE
    out["close"] = close / TICKS_PER_RUPEE
    out["price_change_raw"] = (last - close) * _PAISE_PER_TICK
    out["last_traded_quantity"] = s.ltq[rows]
    out["average_traded_price"] = s.take(rows).average_price()
    out["volume_traded"] = s.volume[rows]
    out["last_trade_time"] = s.ltt[rows]
    out["exchange_timestamp"] = state.model.clock.slot_epoch(state.slot)
    out["oi"] = s.oi[rows]
    out["oi_day_high"] = s.oi_high[rows]
    out["oi_day_low"] = s.oi_low[rows]
    book_rows = np.flatnonzero(modes >= 2)
    if book_rows.size:
        book = state.depth(rows[book_rows], last[book_rows])
        out["total_buy_quantity"][book_rows] = book["total_buy"]
        out["total_sell_quantity"][book_rows] = book["total_sell"]
        for side, prefix in (("bid", "bid"), ("ask", "ask")):
            out[f"{prefix}_qty"][book_rows] = book[f"{side}_qty"]
            out[f"{prefix}_price"][book_rows] = book[f"{side}_price"] / TICKS_PER_RUPEE
            out[f"{prefix}_orders"][book_rows] = book[f"{side}_orders"]
    return out
