"""Vectorized codec for Kite Connect binary ticker frames.

A frame is ``uint16 N`` followed by N ``(uint16 length, packet)`` pairs, big-endian
(KITE_PROTOCOL.md §1.4). Packets decode to rows of :data:`TICK_DTYPE`. :func:`decode_many` is
the hot path: it finds packet boundaries for a whole batch of frames with a vectorized stride
test, then decodes all packets of one length together with a few numpy operations per
cache-sized chunk (see :class:`~ticker_tasks.kite.codec_layout.GroupPlan`).
:func:`to_kite_ticks` turns rows into exactly the dicts ``kiteconnect.KiteTicker._parse_binary``
yields, with timezone-aware IST datetimes; :func:`encode` is the exact inverse of decoding.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from ticker_tasks.errors import ValidationError
from ticker_tasks.kite.codec_layout import (
    DEFAULT_DIVISOR,
    DIVISORS,
    LEN_FULL,
    LEN_INDEX_FULL,
    LEN_INDEX_QUOTE,
    LEN_LTP,
    LEN_QUOTE,
    MODE_BY_LENGTH,
    MODE_FULL,
    MODE_LTP,
    MODE_NAMES,
    MODE_QUOTE,
    PLANS,
    PRICE_COLUMN_CLOSE,
    PRICE_COLUMN_LAST,
    SEGMENT_INDICES,
    TICK_DTYPE,
    VALID_LENGTHS,
    GroupPlan,
    Located,
    locate,
    records,
)

__all__ = [
    "HEARTBEAT",
    "MODE_FULL",
    "MODE_LTP",
    "MODE_QUOTE",
    "TICK_DTYPE",
    "VALID_LENGTHS",
    "DecodeStats",
    "FrameError",
    "decode",
    "decode_many",
    "encode",
    "encode_frames",
    "to_kite_ticks",
]

IST: Final = ZoneInfo("Asia/Kolkata")
HEARTBEAT: Final = b"\x00"
MAX_PACKETS_PER_FRAME: Final = 0xFFFF

Rows = npt.NDArray[np.void]
IntArray = npt.NDArray[np.int64]

_ROW_VOID: Final = np.dtype((np.void, TICK_DTYPE.itemsize))
_F64: Final = np.dtype(np.float64)
_F64_BE: Final = np.dtype(">f8")
_U32: Final = np.dtype(np.uint32)
#: Packets decoded per step: keeps one step's rows and scratch arrays in L2 cache and its
#: allocations small (large short-lived arrays cost page faults on every call).
_CHUNK: Final = 4096
_KNOWN_LENGTH: Final = np.zeros(0x10000, dtype=np.bool_)
_KNOWN_LENGTH[list(VALID_LENGTHS)] = True


class FrameError(ValidationError, ValueError):
    """A binary frame is truncated or inconsistent with its own header."""


@dataclass(slots=True)
class DecodeStats:
    """Counters updated by :func:`decode` and :func:`decode_many`.

    Attributes:
        frames: Frames seen, including heartbeats and bad frames.
        packets: Packets decoded into rows.
        unknown_packets: Packets skipped because their length is not 8/28/32/44/184.
        bad_frames: Frames rejected with :class:`FrameError`.
    """

    frames: int = 0
    packets: int = 0
    unknown_packets: int = 0
    bad_frames: int = 0


# --------------------------------------------------------------------------- decoding


class _Scratch(threading.local):
    """Per-thread scratch buffers reused by every decode step.

    Fresh multi-megabyte temporaries on every call make glibc hand memory back to the OS and
    fault it in again (page faults cost more than the decoding itself); reusing a few buffers
    avoids that.
    """

    def __init__(self) -> None:
        self.buffers: dict[str, npt.NDArray[np.uint8]] = {}

    def get(self, name: str, count: int, dtype: np.dtype[Any]) -> Any:
        """A ``(count,)`` array of ``dtype`` backed by the scratch buffer ``name``."""
        size = count * dtype.itemsize
        buf = self.buffers.get(name)
        if buf is None or buf.size < size:
            buf = self.buffers[name] = np.empty(max(size, 1 << 16), dtype=np.uint8)
        return buf[:size].view(dtype)


_SCRATCH: Final = _Scratch()


def _native_words(raw: bytes, starts: IntArray, length: int) -> npt.NDArray[np.uint32]:
    """Gather the packets starting at ``starts`` as native-order 32-bit words, one row each."""
    packets = records(raw, length)[starts].view(">u4")
    words: npt.NDArray[np.uint32] = _SCRATCH.get("words", packets.size, _U32)
    np.copyto(words, packets)  # byte swap; several times faster than ndarray.byteswap
    return words.reshape(-1, length // 4)


def _divide_prices(raw: npt.NDArray[np.float64], segment: npt.NDArray[np.integer[Any]]) -> Any:
    """``raw / divisor`` per row, exactly as kiteconnect's ``int / float`` (into scratch)."""
    prices = _SCRATCH.get("prices", raw.size, _F64).reshape(raw.shape)
    if bool(_ODD_DIVISOR[segment].any()):
        np.divide(raw, DIVISORS[segment][:, None], out=prices)
    else:  # the common case: one scalar divisor, about twice as fast
        np.divide(raw, DEFAULT_DIVISOR, out=prices)
    return prices


def _decode_group(raw: bytes, starts: IntArray, plan: GroupPlan, rows: Rows) -> None:
    """Decode packets of one length (starting at ``starts`` in ``raw``) into ``rows``, which
    must hold copies of ``_TEMPLATES[plan.length]``."""
    words = _native_words(raw, starts, plan.length)
    count = words.shape[0]
    rows.view(plan.int_rows)[...] = words.view(plan.int_packet).reshape(-1)
    raw_prices = _SCRATCH.get("raw_prices", count, plan.price_wide)
    raw_prices[...] = words.view(plan.price_packet).reshape(-1)
    segment = words[:, 0] & 0xFF
    prices = _divide_prices(raw_prices.view(np.float64).reshape(count, -1), segment)
    if plan.length != LEN_LTP:
        close = prices[:, PRICE_COLUMN_CLOSE[plan.length]]
        change = (prices[:, PRICE_COLUMN_LAST[plan.length]] - close) * 100.0
        rows["change"] = np.divide(change, close, out=np.zeros_like(change), where=close != 0)
    swapped = _SCRATCH.get("swapped", prices.size, _F64_BE).reshape(prices.shape)
    np.copyto(swapped, prices)  # see GroupPlan.price_swapped
    rows.view(plan.price_rows)[...] = swapped.view(plan.price_swapped).reshape(-1)
    rows["segment"] = segment
    rows["tradable"] = _TRADABLE[segment]


def _decode_chunk(raw: bytes, starts: IntArray, lengths: IntArray, rows: Rows) -> None:
    """Decode one cache-sized chunk of known-length packets into ``rows`` (same order)."""
    first = int(lengths[0])
    if bool(np.all(lengths == first)):
        rows.view(_ROW_VOID)[:] = _TEMPLATES[first]
        _decode_group(raw, starts, PLANS[first], rows)
        return
    for length in VALID_LENGTHS:
        idx = np.flatnonzero(lengths == length)
        if idx.size:
            group = np.empty(idx.size, dtype=TICK_DTYPE)
            group.view(_ROW_VOID)[:] = _TEMPLATES[length]
            _decode_group(raw, starts[idx], PLANS[length], group)
            rows.view(_ROW_VOID)[idx] = group.view(_ROW_VOID)


def _template(length: int) -> npt.NDArray[np.void]:
    """A one-row array: all zero but ``mode`` and ``packet_length`` of ``length``."""
    row = np.zeros(1, dtype=TICK_DTYPE)
    row["mode"] = MODE_BY_LENGTH[length]
    row["packet_length"] = length
    return row.view(_ROW_VOID)


#: Initial content of a row decoded from a packet of each length.
_TEMPLATES: Final = {length: _template(length) for length in VALID_LENGTHS}
_TRADABLE: Final = np.arange(256) != SEGMENT_INDICES
_ODD_DIVISOR: Final = DIVISORS != DEFAULT_DIVISOR


def _decode_located(
    raw: bytes, located: Located, stats: DecodeStats | None
) -> tuple[Rows, npt.NDArray[np.bool_]]:
    """Decode the located packets in order, skipping (and counting) unknown lengths.

    Returns:
        The rows, and the mask of located packets that were decoded.
    """
    known = _KNOWN_LENGTH[located.lengths]
    starts, lengths = located.starts, located.lengths
    count = int(np.count_nonzero(known))
    if count != lengths.size:
        starts, lengths = starts[known], lengths[known]
    if stats is not None:
        stats.unknown_packets += int(known.size - count)
        stats.packets += count
    rows = np.empty(count, dtype=TICK_DTYPE)
    for lo in range(0, count, _CHUNK):
        hi = lo + _CHUNK
        _decode_chunk(raw, starts[lo:hi], lengths[lo:hi], rows[lo:hi])
    return rows, known


def decode_many(frames: Sequence[bytes], stats: DecodeStats | None = None) -> tuple[Rows, IntArray]:
    """Decode a batch of frames into one array of rows.

    Bad frames (truncated, inconsistent headers, trailing bytes) are skipped and counted in
    ``stats.bad_frames``; heartbeats and empty frames contribute no rows.

    Args:
        frames: Binary WebSocket messages as received from the ticker.
        stats: Optional counters to update.

    Returns:
        ``(rows, frame_index)``: rows of :data:`TICK_DTYPE` in frame then packet order, and for
        each row the index of its frame in ``frames``.
    """
    sizes = np.fromiter(map(len, frames), dtype=np.int64, count=len(frames))
    raw = b"".join(frames)
    located = locate(raw, sizes)
    if stats is not None:
        stats.frames += sizes.size
        stats.bad_frames += len(located.errors)
    rows, known = _decode_located(raw, located, stats)
    return rows, located.frame_index[known]


def decode(frame: bytes, stats: DecodeStats | None = None) -> Rows:
    """Decode one frame into rows of :data:`TICK_DTYPE`, in packet order.

    Args:
        frame: One binary WebSocket message. Frames shorter than 2 bytes (heartbeats) and
            frames announcing 0 packets yield an empty array.
        stats: Optional counters to update.

    Returns:
        The decoded rows; packets of unknown length are skipped (and counted).

    Raises:
        FrameError: The frame is truncated or has bytes after its last packet.
    """
    raw = bytes(frame)
    located = locate(raw, np.array([len(raw)], dtype=np.int64))
    if stats is not None:
        stats.frames += 1
        stats.bad_frames += len(located.errors)
    if located.errors:
        raise FrameError(located.errors[0])
    return _decode_located(raw, located, stats)[0]


# --------------------------------------------------------------------------- encoding


def _encode_group(rows: Rows, plan: GroupPlan) -> npt.NDArray[np.uint8]:
    """Encode rows that all use ``plan.length`` into an ``(n, length)`` byte array."""
    ints = np.empty(rows.size, dtype=plan.int_wide)
    ints[...] = rows.view(plan.int_rows)
    wide = ints.view(np.int64).reshape(rows.size, -1)
    if not bool(np.all((wide >= plan.int_min) & (wide <= plan.int_max))):
        raise ValueError(f"an integer field does not fit its {plan.length}-byte packet slot")
    packets = np.zeros(rows.size, dtype=plan.int_packet)
    packets[...] = ints
    prices = np.empty(rows.size, dtype=plan.price_wide)
    prices[...] = rows.view(plan.price_rows)
    segment = rows["instrument_token"] & 0xFF
    scaled = np.rint(prices.view(np.float64).reshape(rows.size, -1) * DIVISORS[segment][:, None])
    if not bool(np.all((scaled >= 0) & (scaled <= 0xFFFF_FFFF))):
        raise ValueError(f"a price does not fit its {plan.length}-byte packet slot")
    words = packets.view(np.uint32).reshape(rows.size, -1)
    words[:, plan.price_words] = scaled
    return words.astype(">u4").view(np.uint8)


def encode(rows: Rows) -> bytes:
    """Encode rows of :data:`TICK_DTYPE` into one frame (header and packets).

    Each row's layout is chosen by its ``packet_length`` (8/28/32/44/184); prices are multiplied
    by the segment divisor of ``instrument_token`` and rounded; depth padding is zero.
    ``segment``, ``mode``, ``tradable`` and ``change`` are derived fields and are not written.

    Args:
        rows: Rows to encode, at most 65535.

    Returns:
        The frame bytes. An empty ``rows`` gives the 2-byte frame ``b"\\x00\\x00"``.

    Raises:
        ValueError: Wrong dtype, too many rows, unknown packet length or a value that does not
            fit its wire field.
    """
    if rows.dtype != TICK_DTYPE:
        raise ValueError("rows must have dtype TICK_DTYPE")
    if rows.size > MAX_PACKETS_PER_FRAME:
        raise ValueError(f"{rows.size} rows exceed {MAX_PACKETS_PER_FRAME} packets per frame")
    rows = np.ascontiguousarray(rows.reshape(-1))
    lengths = rows["packet_length"].astype(np.int64)
    if not bool(np.all(_KNOWN_LENGTH[lengths])):
        raise ValueError("packet_length must be one of 8, 28, 32, 44, 184")
    slots = np.zeros(rows.size, dtype=np.int64)
    np.cumsum(2 + lengths[:-1], out=slots[1:])
    slots += 2
    out = np.zeros(2 + int(np.sum(2 + lengths)), dtype=np.uint8)
    out[0], out[1] = rows.size >> 8, rows.size & 0xFF
    out[slots], out[slots + 1] = lengths >> 8, lengths & 0xFF
    for length in VALID_LENGTHS:
        idx = np.flatnonzero(lengths == length)
        if idx.size:
            group = rows if idx.size == rows.size else rows.view(_ROW_VOID)[idx].view(TICK_DTYPE)
            packets = _encode_group(group, PLANS[length])
            records(out, length)[slots[idx] + 2] = packets.view((np.void, length)).reshape(-1)
    return out.tobytes()


def encode_frames(rows: Rows, max_packets_per_frame: int = 500) -> list[bytes]:
    """Encode rows into consecutive frames of at most ``max_packets_per_frame`` packets.

    Args:
        rows: Rows of :data:`TICK_DTYPE`.
        max_packets_per_frame: Packet cap per frame (1..65535).

    Returns:
        The frames, in row order; empty when ``rows`` is empty.

    Raises:
        ValueError: As :func:`encode`, or a cap outside 1..65535.
    """
    if not 1 <= max_packets_per_frame <= MAX_PACKETS_PER_FRAME:
        raise ValueError("max_packets_per_frame must be in 1..65535")
    step = max_packets_per_frame
    return [encode(rows[i : i + step]) for i in range(0, rows.size, step)]


# --------------------------------------------------------------------------- kiteconnect view


def _timestamp(epoch: int) -> datetime | None:
    """``datetime.fromtimestamp`` in IST, ``None`` where kiteconnect would get an exception."""
    try:
        return datetime.fromtimestamp(epoch, tz=IST)
    except (OverflowError, OSError, ValueError):
        return None


def _base(c: dict[str, list[Any]], i: int) -> dict[str, Any]:
    """Keys common to every tick, in kiteconnect's order."""
    return {
        "tradable": c["tradable"][i],
        "mode": MODE_NAMES[MODE_BY_LENGTH[c["packet_length"][i]]],
        "instrument_token": c["instrument_token"][i],
        "last_price": c["last_price"][i],
    }


def _change(c: dict[str, list[Any]], i: int) -> float | int:
    """kiteconnect's ``change``: the int 0 when close is 0, else the percentage float."""
    return 0 if c["close"][i] == 0 else c["change"][i]


def _tick_ltp(c: dict[str, list[Any]], i: int) -> dict[str, Any]:
    """Tick of an 8-byte LTP packet."""
    return _base(c, i)


def _tick_index(c: dict[str, list[Any]], i: int) -> dict[str, Any]:
    """Tick of a 28/32-byte index packet."""
    d = _base(c, i)
    d["ohlc"] = {k: c[k][i] for k in ("high", "low", "open", "close")}
    d["change"] = _change(c, i)
    if c["packet_length"][i] == LEN_INDEX_FULL:
        d["exchange_timestamp"] = _timestamp(c["exchange_timestamp"][i])
    return d


def _tick_quote(c: dict[str, list[Any]], i: int) -> dict[str, Any]:
    """Tick of a 44/184-byte quote or full packet."""
    d = _base(c, i)
    for key in _QUOTE_QTY_KEYS:
        d[key] = c[key][i]
    d["ohlc"] = {k: c[k][i] for k in ("open", "high", "low", "close")}
    d["change"] = _change(c, i)
    if c["packet_length"][i] == LEN_FULL:
        d["last_trade_time"] = _timestamp(c["last_trade_time"][i])
        for key in ("oi", "oi_day_high", "oi_day_low"):
            d[key] = c[key][i]
        d["exchange_timestamp"] = _timestamp(c["exchange_timestamp"][i])
        d["depth"] = {"buy": _depth(c, i, "bid"), "sell": _depth(c, i, "ask")}
    return d


def _depth(c: dict[str, list[Any]], i: int, prefix: str) -> list[dict[str, Any]]:
    """One side of the market depth as kiteconnect's list of 5 dicts."""
    qty, price, orders = (c[f"{prefix}_{k}"][i] for k in ("qty", "price", "orders"))
    return [
        {"quantity": q, "price": p, "orders": o} for q, p, o in zip(qty, price, orders, strict=True)
    ]


_QUOTE_QTY_KEYS: Final = (
    "last_traded_quantity",
    "average_traded_price",
    "volume_traded",
    "total_buy_quantity",
    "total_sell_quantity",
)
_TICK_BUILDERS: Final[dict[int, Callable[[dict[str, list[Any]], int], dict[str, Any]]]] = {
    LEN_LTP: _tick_ltp,
    LEN_INDEX_QUOTE: _tick_index,
    LEN_INDEX_FULL: _tick_index,
    LEN_QUOTE: _tick_quote,
    LEN_FULL: _tick_quote,
}


def to_kite_ticks(rows: Rows) -> list[dict[str, Any]]:
    """Convert rows to the tick dicts ``KiteTicker._parse_binary`` yields for the same packets.

    Keys, key order, values and Python types match kiteconnect 5.2.2, except that
    ``last_trade_time`` and ``exchange_timestamp`` are timezone-aware datetimes in Asia/Kolkata.

    Args:
        rows: Rows of :data:`TICK_DTYPE` (e.g. from :func:`decode`).

    Returns:
        One dict per row, in row order.

    Raises:
        ValueError: A row has an unknown ``packet_length``.
    """
    columns = {name: rows[name].tolist() for name in TICK_DTYPE.names or ()}
    ticks: list[dict[str, Any]] = []
    for i, length in enumerate(columns["packet_length"]):
        builder = _TICK_BUILDERS.get(length)
        if builder is None:
            raise ValueError(f"row {i}: unknown packet_length {length}")
        ticks.append(builder(columns, i))
    return ticks
