"""Partial 1-minute bars of one batch (vectorized): what the Redis merge combines.

A tick belongs to the minute of its tick time (exchange timestamp where the packet has one,
else the frame's receive time). Per ``(instrument, minute)`` a batch contributes:

- open / close: the price of the row with the smallest / largest order key (the latest
  state's key: tick time, cumulative volume, receive time, connection, seq, packet index;
  see :mod:`ticker_tasks.pipeline.state`), so the merged bar does not depend on which batch
  arrived first;
- high / low: max / min of ``last_price``;
- the largest and the smallest non-zero cumulative ``volume_traded`` (the bar's volume is
  derived from them when it closes, see :mod:`ticker_tasks.bars.close`);
- the open interest of the largest-keyed row that carries one (``oi > 0``).

Every one of these is a min or a max over a total order, so merging partial bars is
commutative, associative and idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from ticker_tasks.pipeline.columns import Rows
from ticker_tasks.pipeline.state import KEY_BYTES, micros
from ticker_tasks.pipeline.validate import FloatArray, IntArray, tick_times

#: Bits of a bar's ``sources`` field: which batch sources contributed ticks.
SOURCE_BITS: Final = {"stream": 1, "mock": 2, "replay": 4}
_NO_VOLUME: Final = np.iinfo(np.int64).max
KeyArray = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class PartialBars:
    """One partial bar per ``(instrument_token, minute)`` present in a batch (same order).

    Keys are ``(bars, KEY_BYTES)`` digit arrays; a bar without open interest has the all-zero
    key :data:`~ticker_tasks.pipeline.state.NO_KEY` as ``oi_key``.
    """

    token: IntArray
    minute: IntArray
    open_key: KeyArray
    open: FloatArray
    close_key: KeyArray
    close: FloatArray
    high: FloatArray
    low: FloatArray
    volume_max: IntArray
    volume_min: IntArray
    oi_key: KeyArray
    oi: IntArray

    def __len__(self) -> int:
        return int(self.token.size)


def aggregate(
    rows: Rows, received_at: FloatArray, packet_index: IntArray, keys: KeyArray
) -> PartialBars:
    """The partial bars of a batch's validated rows.

    Args:
        rows: Validated rows.
        received_at: Receive time of each row's frame.
        packet_index: Each row's index in the decoded batch.
        keys: The rows' order keys (:func:`~ticker_tasks.pipeline.state.order_key_array`).
    """
    received_at = np.asarray(received_at, dtype=np.float64)
    packet_index = np.asarray(packet_index, dtype=np.int64)
    times = tick_times(rows, received_at)
    tick_us = micros(times)
    minute = (np.floor(times / 60.0) * 60).astype(np.int64)
    token = rows["instrument_token"].astype(np.int64)
    volume = rows["volume_traded"].astype(np.int64)
    recv_us = micros(received_at)
    # Grouped by (token, minute), each group ascending by the order key.
    order = np.lexsort((packet_index, recv_us, volume, tick_us, minute, token))
    s_token, s_minute = token[order], minute[order]
    s_price = rows["last_price"][order].astype(np.float64)
    s_volume = volume[order]
    s_oi = rows["oi"][order].astype(np.int64)
    n = order.size
    if n == 0:
        empty_i = np.zeros(0, dtype=np.int64)
        empty_f = np.zeros(0, dtype=np.float64)
        return PartialBars(
            empty_i,
            empty_i,
            keys[:0],
            empty_f,
            keys[:0],
            empty_f,
            empty_f,
            empty_f,
            empty_i,
            empty_i,
            keys[:0],
            empty_i,
        )
    new_group = np.ones(n, dtype=np.bool_)
    new_group[1:] = (s_token[1:] != s_token[:-1]) | (s_minute[1:] != s_minute[:-1])
    starts = np.flatnonzero(new_group)
    ends = np.append(starts[1:] - 1, n - 1)
    positions = np.arange(n, dtype=np.int64)
    oi_pos = np.maximum.reduceat(np.where(s_oi > 0, positions, -1), starts)
    has_oi = oi_pos >= 0

    oi_keys = np.full((starts.size, KEY_BYTES), ord("0"), dtype=np.uint8)
    oi_keys[has_oi] = keys[order[oi_pos[has_oi]]]
    volume_min = np.minimum.reduceat(np.where(s_volume > 0, s_volume, _NO_VOLUME), starts)
    return PartialBars(
        token=s_token[starts],
        minute=s_minute[starts],
        open_key=keys[order[starts]],
        open=s_price[starts],
        close_key=keys[order[ends]],
        close=s_price[ends],
        high=np.maximum.reduceat(s_price, starts),
        low=np.minimum.reduceat(s_price, starts),
        volume_max=np.maximum.reduceat(s_volume, starts),
        volume_min=np.where(volume_min == _NO_VOLUME, 0, volume_min),
        oi_key=oi_keys,
        oi=np.where(has_oi, s_oi[np.maximum(oi_pos, 0)], 0),
    )
