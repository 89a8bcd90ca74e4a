"""Frame and packet layout for the Kite Connect binary ticker codec.

Frames (KITE_PROTOCOL.md §1.4): :func:`locate` finds the packets of a batch of concatenated
frames, with a vectorized stride test for frames whose packets all have one length and a header
walk for the others.

Packets: every packet is a sequence of big-endian 32-bit words (§1.6). For each packet
length a :class:`GroupPlan` describes where each word goes in a :data:`TICK_DTYPE` row, as a
pair of numpy structured dtypes: once a group of packets has been byte-swapped to native order,
a single structured assignment moves every integer field into place, and one more moves the
prices (divided by the segment divisor beforehand). That keeps the per-field Python and numpy
call overhead out of the hot path.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

LEN_LTP: Final = 8
LEN_INDEX_QUOTE: Final = 28
LEN_INDEX_FULL: Final = 32
LEN_QUOTE: Final = 44
LEN_FULL: Final = 184
VALID_LENGTHS: Final[tuple[int, ...]] = (
    LEN_LTP,
    LEN_INDEX_QUOTE,
    LEN_INDEX_FULL,
    LEN_QUOTE,
    LEN_FULL,
)

MODE_LTP: Final = 1
MODE_QUOTE: Final = 2
MODE_FULL: Final = 3

#: Numeric mode (``TICK_DTYPE["mode"]``) implied by each packet length.
MODE_BY_LENGTH: Final[dict[int, int]] = {
    LEN_LTP: MODE_LTP,
    LEN_INDEX_QUOTE: MODE_QUOTE,
    LEN_INDEX_FULL: MODE_FULL,
    LEN_QUOTE: MODE_QUOTE,
    LEN_FULL: MODE_FULL,
}
#: kiteconnect's ``mode`` strings (``KiteTicker.MODE_*``) by numeric mode.
MODE_NAMES: Final[dict[int, str]] = {MODE_LTP: "ltp", MODE_QUOTE: "quote", MODE_FULL: "full"}

SEGMENT_CDS: Final = 3
SEGMENT_BCD: Final = 6
SEGMENT_INDICES: Final = 9
SEGMENT_NCO: Final = 12

DEPTH_LEVELS: Final = 5

#: One row per packet. Fields absent from a packet kind are 0. Prices are already divided by
#: the segment divisor; ``change`` is kiteconnect's percentage; timestamps are epoch seconds.
TICK_DTYPE: Final = np.dtype(
    [
        ("instrument_token", np.int64),
        ("segment", np.uint8),
        ("mode", np.uint8),
        ("packet_length", np.uint16),
        ("tradable", np.bool_),
        ("last_price", np.float64),
        ("last_traded_quantity", np.int64),
        ("average_traded_price", np.float64),
        ("volume_traded", np.int64),
        ("total_buy_quantity", np.int64),
        ("total_sell_quantity", np.int64),
        ("open", np.float64),
        ("high", np.float64),
        ("low", np.float64),
        ("close", np.float64),
        ("change", np.float64),
        ("price_change_raw", np.int32),
        ("last_trade_time", np.int64),
        ("exchange_timestamp", np.int64),
        ("oi", np.int64),
        ("oi_day_high", np.int64),
        ("oi_day_low", np.int64),
        ("bid_qty", np.int64, (DEPTH_LEVELS,)),
        ("bid_price", np.float64, (DEPTH_LEVELS,)),
        ("bid_orders", np.int32, (DEPTH_LEVELS,)),
        ("ask_qty", np.int64, (DEPTH_LEVELS,)),
        ("ask_price", np.float64, (DEPTH_LEVELS,)),
        ("ask_orders", np.int32, (DEPTH_LEVELS,)),
    ],
    align=True,
)


def _divisor_table() -> npt.NDArray[np.float64]:
    """Build the price divisor for each of the 256 possible segment ids (kiteconnect 5.2.2)."""
    table = np.full(256, 100.0, dtype=np.float64)
    table[SEGMENT_CDS] = 10_000_000.0
    table[SEGMENT_BCD] = 10_000.0
    table[SEGMENT_NCO] = 10_000.0
    return table


#: Price divisor indexed by segment id (``instrument_token & 0xFF``).
DIVISORS: Final[npt.NDArray[np.float64]] = _divisor_table()
#: The divisor of most segments, and the others.
DEFAULT_DIVISOR: Final = 100.0
OTHER_DIVISORS: Final[tuple[float, ...]] = tuple(
    float(v) for v in np.unique(DIVISORS) if v != DEFAULT_DIVISOR
)

# Wire words of each packet kind: (field, depth level or -1, word index, kind). Kinds: "u32"
# unsigned integer, "i32" signed integer, "price" unsigned integer / divisor, "u16" the
# unsigned 16-bit value in the high half of the word (depth orders; the low half is padding).
Word = tuple[str, int, int, str]

_INDEX_WORDS: Final[tuple[Word, ...]] = (
    ("instrument_token", -1, 0, "u32"),
    ("last_price", -1, 1, "price"),
    ("high", -1, 2, "price"),  # index packets order OHLC as high, low, open, close
    ("low", -1, 3, "price"),
    ("open", -1, 4, "price"),
    ("close", -1, 5, "price"),
    ("price_change_raw", -1, 6, "i32"),
)
_QUOTE_WORDS: Final[tuple[Word, ...]] = (
    ("instrument_token", -1, 0, "u32"),
    ("last_price", -1, 1, "price"),
    ("last_traded_quantity", -1, 2, "u32"),
    ("average_traded_price", -1, 3, "price"),
    ("volume_traded", -1, 4, "u32"),
    ("total_buy_quantity", -1, 5, "u32"),
    ("total_sell_quantity", -1, 6, "u32"),
    ("open", -1, 7, "price"),
    ("high", -1, 8, "price"),
    ("low", -1, 9, "price"),
    ("close", -1, 10, "price"),
)
_FULL_EXTRA_WORDS: Final[tuple[Word, ...]] = (
    ("last_trade_time", -1, 11, "u32"),
    ("oi", -1, 12, "u32"),
    ("oi_day_high", -1, 13, "u32"),
    ("oi_day_low", -1, 14, "u32"),
    ("exchange_timestamp", -1, 15, "u32"),
)
#: First word of the depth block of a full packet: 10 entries of 3 words (quantity, price,
#: orders << 16 | padding), 5 bid entries then 5 ask entries.
DEPTH_FIRST_WORD: Final = 16


def _depth_words() -> tuple[Word, ...]:
    """Words of the 10 market depth entries of a full packet."""
    words: list[Word] = []
    for entry in range(2 * DEPTH_LEVELS):
        side, level = ("bid", "ask")[entry // DEPTH_LEVELS], entry % DEPTH_LEVELS
        base = DEPTH_FIRST_WORD + 3 * entry
        words.append((f"{side}_qty", level, base, "u32"))
        words.append((f"{side}_price", level, base + 1, "price"))
        words.append((f"{side}_orders", level, base + 2, "u16"))
    return tuple(words)


#: Every field carried by each packet length.
PACKET_WORDS: Final[dict[int, tuple[Word, ...]]] = {
    LEN_LTP: (("instrument_token", -1, 0, "u32"), ("last_price", -1, 1, "price")),
    LEN_INDEX_QUOTE: _INDEX_WORDS,
    LEN_INDEX_FULL: (*_INDEX_WORDS, ("exchange_timestamp", -1, 7, "u32")),
    LEN_QUOTE: _QUOTE_WORDS,
    LEN_FULL: (*_QUOTE_WORDS, *_FULL_EXTRA_WORDS, *_depth_words()),
}

#: numpy format and byte offset inside a native-order (byte-swapped) packet, by word kind; the
#: 16-bit value is the high half of its 32-bit word.
_NATIVE_FORMAT: Final[dict[str, tuple[str, int]]] = {
    "u32": ("=u4", 0),
    "i32": ("=i4", 0),
    "u16": ("=u2", 2 if sys.byteorder == "little" else 0),
}
#: Value range each integer kind can carry on the wire.
KIND_RANGE: Final[dict[str, tuple[int, int]]] = {
    "u32": (0, 0xFFFF_FFFF),
    "i32": (-0x8000_0000, 0x7FFF_FFFF),
    "u16": (0, 0xFFFF),
}


@dataclass(frozen=True, slots=True)
class GroupPlan:
    """How the words of one packet length map onto :data:`TICK_DTYPE` rows.

    Attributes:
        length: Packet length in bytes.
        int_packet: Structured dtype over a native-order packet selecting the integer fields.
        int_rows: Structured dtype over a row selecting the same fields, in the same order.
        int_wide: The same fields as consecutive ``int64`` values (for range checks).
        int_min: Smallest wire value of each integer field.
        int_max: Largest wire value of each integer field.
        price_words: Word index of each price field.
        price_packet: Structured dtype over a native-order packet selecting the price words.
        price_rows: Structured dtype over a row selecting the price fields (float64).
        price_wide: The price fields as consecutive float64 values.
        price_swapped: As ``price_wide`` but big-endian. numpy copies structured fields of
            identical dtypes several times slower than it casts them, so the decoder writes
            the prices through a big-endian copy and lets the assignment cast them back.
    """

    length: int
    int_packet: np.dtype[np.void]
    int_rows: np.dtype[np.void]
    int_wide: np.dtype[np.void]
    int_min: npt.NDArray[np.int64]
    int_max: npt.NDArray[np.int64]
    price_words: npt.NDArray[np.intp]
    price_packet: np.dtype[np.void]
    price_rows: np.dtype[np.void]
    price_wide: np.dtype[np.void]
    price_swapped: np.dtype[np.void]


_ROW_FIELDS: Final = dict(TICK_DTYPE.fields or {})


def _row_offset(field: str, level: int) -> tuple[np.dtype[np.generic], int]:
    """Scalar dtype and byte offset of ``field`` (element ``level`` if a sub-array) in a row."""
    dtype, offset = _ROW_FIELDS[field][:2]
    if level < 0:
        return dtype, offset
    base = dtype.base
    return base, offset + level * base.itemsize


def _struct(
    fields: list[tuple[np.dtype[np.generic] | str, int]], itemsize: int
) -> np.dtype[np.void]:
    """Structured dtype with fields ``f0..fn`` of the given formats at the given offsets."""
    return np.dtype(
        {
            "names": [f"f{i}" for i in range(len(fields))],
            "formats": [fmt for fmt, _ in fields],
            "offsets": [offset for _, offset in fields],
            "itemsize": itemsize,
        }
    )


def _plan(length: int) -> GroupPlan:
    """Build the :class:`GroupPlan` of one packet length."""
    words = PACKET_WORDS[length]
    ints = [w for w in words if w[3] != "price"]
    prices = [w for w in words if w[3] == "price"]
    int_packet: list[tuple[np.dtype[np.generic] | str, int]] = []
    for _, _, word, kind in ints:
        fmt, shift = _NATIVE_FORMAT[kind]
        int_packet.append((fmt, 4 * word + shift))
    return GroupPlan(
        length=length,
        int_packet=_struct(int_packet, length),
        int_rows=_struct([_row_offset(f, lv) for f, lv, _, _ in ints], TICK_DTYPE.itemsize),
        int_wide=_struct([("=i8", 8 * i) for i in range(len(ints))], 8 * len(ints)),
        int_min=np.array([KIND_RANGE[w[3]][0] for w in ints], dtype=np.int64),
        int_max=np.array([KIND_RANGE[w[3]][1] for w in ints], dtype=np.int64),
        price_words=np.array([w[2] for w in prices], dtype=np.intp),
        price_packet=_struct([("=u4", 4 * w[2]) for w in prices], length),
        price_rows=_struct([_row_offset(f, lv) for f, lv, _, _ in prices], TICK_DTYPE.itemsize),
        price_wide=_struct([("=f8", 8 * i) for i in range(len(prices))], 8 * len(prices)),
        price_swapped=_struct([(">f8", 8 * i) for i in range(len(prices))], 8 * len(prices)),
    )


#: The plan of every valid packet length.
PLANS: Final[dict[int, GroupPlan]] = {length: _plan(length) for length in VALID_LENGTHS}


def _price_column(length: int, field: str) -> int:
    """Column of ``field`` among the price fields of ``length`` packets."""
    return [w[0] for w in PACKET_WORDS[length] if w[3] == "price"].index(field)


#: Column of ``last_price`` / ``close`` among a plan's price fields (``close``: not LTP).
PRICE_COLUMN_LAST: Final = {length: _price_column(length, "last_price") for length in VALID_LENGTHS}
PRICE_COLUMN_CLOSE: Final = {
    length: _price_column(length, "close") for length in VALID_LENGTHS if length != LEN_LTP
}


# --------------------------------------------------------------------------- frames

IntArray = npt.NDArray[np.int64]

#: Batches of at most this many frames are framed one frame at a time (less numpy overhead).
SMALL_BATCH: Final = 4


class _BadFrame(Exception):
    """Internal: one frame is inconsistent (reported through :attr:`Located.errors`)."""


@dataclass(slots=True)
class Located:
    """Packets found in a buffer of concatenated frames, in frame then packet order.

    Attributes:
        starts: Byte offset of each packet (after its length prefix) in the buffer.
        lengths: Length of each packet.
        frame_index: Index of each packet's frame.
        errors: Why each rejected frame (by index) is inconsistent; its packets are not listed.
    """

    starts: IntArray
    lengths: IntArray
    frame_index: IntArray
    errors: dict[int, str]


def records(buf: Any, length: int) -> npt.NDArray[np.void]:
    """View ``buf`` as overlapping ``length``-byte records, one starting at every byte."""
    count = max(len(buf) - length + 1, 0)
    return np.ndarray(shape=(count,), dtype=np.dtype((np.void, length)), buffer=buf, strides=(1,))


def _u16(buf: npt.NDArray[np.uint8], pos: IntArray) -> IntArray:
    """Read big-endian uint16 values at byte positions ``pos`` of ``buf``."""
    return (buf[pos].astype(np.int64) << 8) | buf[pos + 1]


def _uniform_frames(
    buf: npt.NDArray[np.uint8], starts: IntArray, sizes: IntArray
) -> tuple[IntArray, IntArray, IntArray, IntArray]:
    """Find frames whose packets all have the same length, with a vectorized stride test.

    Returns:
        Accepted frame ids, and for their packets: start offsets, lengths and frame ids.
    """
    cand = np.flatnonzero(sizes >= 4)
    first = starts[cand]
    count, length = _u16(buf, first), _u16(buf, first + 2)
    ok = (count > 0) & (sizes[cand] == 2 + count * (2 + length))
    cand, first, count, length = cand[ok], first[ok], count[ok], length[ok]
    owner = np.repeat(np.arange(cand.size), count)
    seq = np.arange(owner.size) - np.repeat(np.cumsum(count) - count, count)
    pos = first[owner] + 2 + seq * (2 + length[owner])
    rejected = np.zeros(cand.size, dtype=np.bool_)
    rejected[owner[_u16(buf, pos) != length[owner]]] = True
    keep = ~rejected[owner]
    return cand[~rejected], pos[keep] + 2, length[owner[keep]], cand[owner[keep]]


def _walk_frame(raw: bytes, start: int, size: int) -> tuple[list[int], list[int]]:
    """Walk one frame's packet headers; raise :class:`_BadFrame` on any inconsistency."""
    end = start + size
    count = int.from_bytes(raw[start : start + 2], "big")
    pos = start + 2
    offsets: list[int] = []
    lengths: list[int] = []
    for number in range(count):
        if pos + 2 > end:
            raise _BadFrame(f"frame truncated in the header of packet {number + 1}/{count}")
        length = int.from_bytes(raw[pos : pos + 2], "big")
        pos += 2
        if pos + length > end:
            raise _BadFrame(f"packet {number + 1}/{count} ({length} bytes) exceeds the frame")
        offsets.append(pos)
        lengths.append(length)
        pos += length
    if pos != end:
        raise _BadFrame(f"{end - pos} trailing bytes after {count} packets")
    return offsets, lengths


def _frame_packets(raw: bytes, start: int, size: int) -> tuple[IntArray, IntArray]:
    """Packet offsets and lengths of one frame: a stride test first, else a header walk."""
    count = int.from_bytes(raw[start : start + 2], "big") if size >= 2 else 0
    if count and size >= 4:
        length = int.from_bytes(raw[start + 2 : start + 4], "big")
        step = 2 + length
        if size == 2 + count * step:
            heads = np.ndarray((count,), dtype=">u2", buffer=raw, offset=start + 2, strides=(step,))
            if bool(np.all(heads == length)):
                offsets = start + 4 + step * np.arange(count, dtype=np.int64)
                return offsets, np.full(count, length, dtype=np.int64)
    offsets_list, lengths_list = _walk_frame(raw, start, size) if size >= 2 else ([], [])
    return np.array(offsets_list, dtype=np.int64), np.array(lengths_list, dtype=np.int64)


def locate(raw: bytes, sizes: IntArray) -> Located:
    """Find every packet of the frames concatenated in ``raw`` (frame sizes ``sizes``).

    Frames shorter than 2 bytes are heartbeats. Large batches use the vectorized stride test
    for all frames at once; the frames it does not accept (and every frame of a small batch)
    are handled one by one. Never raises for malformed input: bad frames land in ``errors``.
    """
    starts = np.zeros_like(sizes)
    np.cumsum(sizes[:-1], out=starts[1:])
    parts: list[tuple[IntArray, IntArray, IntArray]] = []
    pending: list[int] = list(range(sizes.size))
    if sizes.size > SMALL_BATCH:
        done, *uniform = _uniform_frames(np.frombuffer(raw, dtype=np.uint8), starts, sizes)
        parts.append((uniform[0], uniform[1], uniform[2]))
        left = np.ones(sizes.size, dtype=np.bool_)
        left[done] = False
        pending = np.flatnonzero(left & (sizes >= 2)).tolist()
    errors: dict[int, str] = {}
    for frame in pending:
        try:
            offsets, lengths = _frame_packets(raw, int(starts[frame]), int(sizes[frame]))
        except _BadFrame as exc:
            errors[frame] = str(exc)
            continue
        parts.append((offsets, lengths, np.full(offsets.size, frame, dtype=np.int64)))
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return Located(empty, empty, empty, errors)
    if len(parts) == 1:
        return Located(*parts[0], errors)
    offsets, lengths, frames = (np.concatenate(column) for column in zip(*parts, strict=True))
    if sizes.size > SMALL_BATCH:  # uniform and walked frames interleave: restore order
        order = np.argsort(offsets, kind="stable")
        offsets, lengths, frames = offsets[order], lengths[order], frames[order]
    return Located(offsets, lengths, frames, errors)
