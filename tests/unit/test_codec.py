"""Binary ticker codec: decode/encode against kiteconnect's own parser (``_parse_binary``)."""

from __future__ import annotations

import base64
import math
import os
import struct
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kiteconnect import KiteTicker

from ticker_tasks.kite.codec import (
    HEARTBEAT,
    MODE_FULL,
    MODE_LTP,
    MODE_QUOTE,
    TICK_DTYPE,
    DecodeStats,
    FrameError,
    decode,
    decode_many,
    encode,
    encode_frames,
    to_kite_ticks,
)
from ticker_tasks.kite.codec_layout import SMALL_BATCH

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kite"
IST = ZoneInfo("Asia/Kolkata")
U32_MAX = 2**32 - 1
VALID_LENGTHS = (8, 28, 32, 44, 184)
SEGMENTS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 12)
DIVISOR = {3: 10_000_000.0, 6: 10_000.0, 12: 10_000.0}  # every other segment: 100
KITE = KiteTicker("k", "t")


@pytest.fixture(autouse=True, scope="module")
def _ist_local_time() -> Iterator[None]:
    """kiteconnect builds naive local datetimes: make local time IST for this module."""
    previous = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Kolkata"
    time.tzset()
    yield
    if previous is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = previous
    time.tzset()


# --------------------------------------------------------------------------- wire builders


def frame_of(packets: list[bytes]) -> bytes:
    """A frame holding ``packets``, built with struct (independent of the codec)."""
    body = b"".join(struct.pack(">H", len(p)) + p for p in packets)
    return struct.pack(">H", len(packets)) + body


def ltp_packet(token: int, price: int) -> bytes:
    return struct.pack(">II", token, price)


def index_packet(token: int, words: list[int], timestamp: int | None = None) -> bytes:
    """28-byte (or with ``timestamp`` 32-byte) index packet; ``words``: ltp, h, l, o, c, change."""
    packet = struct.pack(">7I", token, *words)
    return packet if timestamp is None else packet + struct.pack(">I", timestamp)


def quote_packet(token: int, words: list[int]) -> bytes:
    """44-byte quote packet; ``words`` are the 10 words after the token."""
    return struct.pack(">11I", token, *words)


def full_packet(token: int, words: list[int], depth: list[tuple[int, int, int]]) -> bytes:
    """184-byte full packet; ``words``: the 15 words after the token; ``depth``: 10 entries."""
    entries = b"".join(struct.pack(">IIHH", q, p, o, 0) for q, p, o in depth)
    return struct.pack(">16I", token, *words) + entries


# --------------------------------------------------------------------------- strategies

u32 = st.one_of(
    st.sampled_from([0, 1, 2**31 - 1, 2**31, U32_MAX - 1, U32_MAX]), st.integers(0, U32_MAX)
)
u16 = st.one_of(st.sampled_from([0, 1, 0xFFFF]), st.integers(0, 0xFFFF))
exchange_token = st.one_of(st.sampled_from([0, 2**24 - 1]), st.integers(0, 2**24 - 1))


def tokens(segments: tuple[int, ...] = SEGMENTS) -> st.SearchStrategy[int]:
    return st.builds(lambda e, s: (e << 8) | s, exchange_token, st.sampled_from(segments))


index_token = st.one_of(tokens((9,)), tokens())
ltp_packets = st.builds(ltp_packet, tokens(), u32)
index28_packets = st.builds(index_packet, index_token, st.lists(u32, min_size=6, max_size=6))
index32_packets = st.builds(index_packet, index_token, st.lists(u32, min_size=6, max_size=6), u32)
quote_packets = st.builds(quote_packet, tokens(), st.lists(u32, min_size=10, max_size=10))
full_packets = st.builds(
    full_packet,
    tokens(),
    st.lists(u32, min_size=15, max_size=15),
    st.lists(st.tuples(u32, u32, u16), min_size=10, max_size=10),
)
unknown_packets = (
    st.integers(0, 200)
    .filter(lambda n: n not in VALID_LENGTHS)
    .flatmap(lambda n: st.binary(min_size=n, max_size=n))
)
KNOWN_KINDS = (ltp_packets, index28_packets, index32_packets, quote_packets, full_packets)
known_packets = st.one_of(*KNOWN_KINDS)
any_packets = st.one_of(known_packets, unknown_packets)
# Frames whose packets all have one length exercise the vectorized stride test.
uniform_packet_lists = st.sampled_from(KNOWN_KINDS).flatmap(
    lambda kind: st.lists(kind, min_size=1, max_size=12)
)
packet_lists = st.one_of(st.lists(any_packets, max_size=12), uniform_packet_lists)
clean_packet_lists = st.one_of(st.lists(known_packets, max_size=12), uniform_packet_lists)


@st.composite
def bad_frames(draw: st.DrawFn) -> bytes:
    """A frame that is truncated, announces too many packets or has trailing bytes."""
    frame = frame_of(draw(st.lists(known_packets, min_size=1, max_size=4)))
    how = draw(st.sampled_from(["cut", "more", "trailing"]))
    if how == "cut":
        return frame[: draw(st.integers(2, len(frame) - 1))]
    if how == "more":
        count = struct.unpack(">H", frame[:2])[0] + draw(st.integers(1, 3))
        return struct.pack(">H", count) + frame[2:]
    return frame + draw(st.binary(min_size=1, max_size=5))


frame_items = st.one_of(
    packet_lists.map(lambda packets: ("good", frame_of(packets))),
    st.sampled_from([("good", HEARTBEAT), ("good", b""), ("good", b"\x00\x00")]),
    bad_frames().map(lambda frame: ("bad", frame)),
)

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- comparison


def assert_same(expected: Any, got: Any, path: str = "tick") -> None:
    """Same structure, key order, values and Python types; datetimes compared as IST."""
    if isinstance(expected, dict):
        assert isinstance(got, dict), path
        assert list(got) == list(expected), f"{path}: keys {list(got)} != {list(expected)}"
        for key, value in expected.items():
            assert_same(value, got[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list), path
        assert len(got) == len(expected), path
        for i, (e, g) in enumerate(zip(expected, got, strict=True)):
            assert_same(e, g, f"{path}[{i}]")
    elif isinstance(expected, datetime):
        assert isinstance(got, datetime), path
        assert got.tzinfo is not None, path
        assert got.utcoffset() == timedelta(hours=5, minutes=30), path
        assert got.replace(tzinfo=None) == expected, path
        assert got.timestamp() == expected.timestamp(), path
    else:
        assert type(got) is type(expected), f"{path}: {type(got)} != {type(expected)}"
        assert got == expected, f"{path}: {got!r} != {expected!r}"
        if isinstance(expected, float):
            assert repr(got) == repr(expected), path


def assert_rows_equal(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == TICK_DTYPE
    assert b.dtype == TICK_DTYPE
    assert a.shape == b.shape
    for name in TICK_DTYPE.names or ():
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert a.tobytes() == b.tobytes()  # padding included: rows are fully deterministic


def concat_rows(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenate rows byte for byte (np.concatenate of structured arrays drops padding)."""
    void = np.dtype((np.void, TICK_DTYPE.itemsize))
    if not parts:
        return np.zeros(0, dtype=TICK_DTYPE)
    return np.concatenate([p.view(void) for p in parts]).view(TICK_DTYPE)


def packet_lengths(frame: bytes) -> list[int]:
    lengths, pos = [], 2
    for _ in range(struct.unpack(">H", frame[:2])[0]):
        length = struct.unpack(">H", frame[pos : pos + 2])[0]
        lengths.append(length)
        pos += 2 + length
    return lengths


# --------------------------------------------------------------------------- properties


@PROPERTY
@given(packet_lists)
def test_decode_matches_kiteconnect(packets: list[bytes]) -> None:
    frame = frame_of(packets)
    stats = DecodeStats()
    rows = decode(frame, stats)
    # kiteconnect reads the token before looking at the length: packets under 4 bytes make it
    # raise struct.error, so its reference output is taken without them (we skip them too).
    reference = frame_of([p for p in packets if len(p) >= 4])
    assert_same(KITE._parse_binary(reference), to_kite_ticks(rows))
    unknown = sum(len(p) not in VALID_LENGTHS for p in packets)
    assert stats == DecodeStats(
        frames=1, packets=len(packets) - unknown, unknown_packets=unknown, bad_frames=0
    )
    assert rows["packet_length"].tolist() == [len(p) for p in packets if len(p) in VALID_LENGTHS]


@PROPERTY
@given(clean_packet_lists)
def test_encode_is_the_exact_inverse_of_decode(packets: list[bytes]) -> None:
    frame = frame_of(packets)
    rows = decode(frame)
    assert encode(rows) == frame
    assert_rows_equal(decode(encode(rows)), rows)


@PROPERTY
@given(st.lists(frame_items, max_size=3 * SMALL_BATCH))
def test_decode_many_keeps_good_frames_and_skips_bad_ones(items: list[tuple[str, bytes]]) -> None:
    frames = [frame for _, frame in items]
    stats = DecodeStats()
    rows, frame_index = decode_many(frames, stats)
    good = [(i, decode(frame)) for i, (kind, frame) in enumerate(items) if kind == "good"]
    expected = concat_rows([r for _, r in good])
    assert_rows_equal(rows, expected)
    assert frame_index.tolist() == [i for i, r in good for _ in range(r.size)]
    assert stats.frames == len(frames)
    assert stats.bad_frames == sum(kind == "bad" for kind, _ in items)
    assert stats.packets == rows.size
    for kind, frame in items:
        if kind == "bad":
            with pytest.raises(FrameError):
                decode(frame)


@PROPERTY
@given(st.binary(max_size=400))
def test_arbitrary_bytes_decode_or_raise_frame_error(data: bytes) -> None:
    try:
        rows = decode(data)
    except FrameError:
        rows_many, index = decode_many([data, data])
        assert rows_many.size == 0
        assert index.size == 0
        return
    assert rows.dtype == TICK_DTYPE
    assert rows.size <= max(len(data) - 2, 0) // 10


@PROPERTY
@given(st.lists(st.one_of(st.binary(max_size=64), clean_packet_lists.map(frame_of)), max_size=12))
def test_decode_many_never_raises_on_arbitrary_frames(frames: list[bytes]) -> None:
    stats = DecodeStats()
    rows, frame_index = decode_many(frames, stats)
    parts, expected_index, bad = [], [], 0
    for i, frame in enumerate(frames):
        try:
            part = decode(frame)
        except FrameError:
            bad += 1
            continue
        parts.append(part)
        expected_index += [i] * part.size
    assert_rows_equal(rows, concat_rows(parts))
    assert frame_index.tolist() == expected_index
    assert stats.bad_frames == bad


@PROPERTY
@given(clean_packet_lists.filter(bool), st.data())
def test_every_truncation_of_a_frame_is_rejected(packets: list[bytes], data: st.DataObject) -> None:
    frame = frame_of(packets)
    cut = data.draw(st.integers(2, len(frame) - 1))
    with pytest.raises(FrameError):
        decode(frame[:cut])
    assert decode(frame[:1]).size == 0  # 1 byte is a heartbeat


# --------------------------------------------------------------------------- recorded samples


def test_recorded_quote_packet_decodes_to_the_documented_values() -> None:
    text = (FIXTURES / "ticker_quote.packet").read_text()
    packet = base64.b64decode("".join(text.split()))
    assert len(packet) == 44
    frame = frame_of([packet])
    (row,) = decode(frame)
    assert row["instrument_token"] == 408065
    assert (row["segment"], row["mode"], row["packet_length"]) == (1, MODE_QUOTE, 44)
    assert bool(row["tradable"]) is True
    assert row["last_price"] == 1573.15
    assert row["last_traded_quantity"] == 1
    assert row["average_traded_price"] == 1570.33
    assert row["volume_traded"] == 1175986
    assert row["total_buy_quantity"] == 256511
    assert row["total_sell_quantity"] == 360503
    ohlc = [float(row[k]) for k in ("open", "high", "low", "close")]
    assert ohlc == [1569.15, 1575.0, 1561.05, 1567.8]
    assert row["change"] == (1573.15 - 1567.8) * 100 / 1567.8
    assert row["last_trade_time"] == row["exchange_timestamp"] == row["oi"] == 0
    assert encode(decode(frame)) == frame
    assert_same(KITE._parse_binary(frame), to_kite_ticks(decode(frame)))


FULL_DEPTH_BUY = [
    (5, 157340, 1),
    (140, 157300, 2),
    (2, 157295, 1),
    (219, 157290, 7),
    (50, 157285, 1),
]
FULL_DEPTH_SELL = [
    (172, 157370, 3),
    (44, 157375, 3),
    (302, 157385, 3),
    (141, 157390, 2),
    (724, 157395, 5),
]


def test_full_packet_from_the_documented_sample() -> None:
    """KITE_PROTOCOL.md §4 ``ticker_full.packet``: build it with encode, check every byte."""
    rows = np.zeros(1, dtype=TICK_DTYPE)
    rows["instrument_token"] = 408065
    rows["packet_length"] = 184
    rows["last_price"] = 157370 / 100
    rows["last_traded_quantity"] = 7
    rows["average_traded_price"] = 157037 / 100
    rows["volume_traded"] = 1192471
    rows["total_buy_quantity"] = 256443
    rows["total_sell_quantity"] = 363009
    for key, raw in zip(
        ("open", "high", "low", "close"), (156915, 157500, 156105, 156780), strict=True
    ):
        rows[key] = raw / 100
    rows["last_trade_time"] = rows["exchange_timestamp"] = 1625461887
    for side, depth in (("bid", FULL_DEPTH_BUY), ("ask", FULL_DEPTH_SELL)):
        rows[f"{side}_qty"] = [q for q, _, _ in depth]
        rows[f"{side}_price"] = [p / 100 for _, p, _ in depth]
        rows[f"{side}_orders"] = [o for _, _, o in depth]
    frame = encode(rows)
    words = [157370, 7, 157037, 1192471, 256443, 363009, 156915, 157500, 156105, 156780]
    words += [1625461887, 0, 0, 0, 1625461887]
    packet = full_packet(408065, words, FULL_DEPTH_BUY + FULL_DEPTH_SELL)
    assert len(packet) == 184
    assert frame == frame_of([packet])

    (row,) = decode(frame)
    assert (row["mode"], row["packet_length"], row["segment"]) == (MODE_FULL, 184, 1)
    assert row["change"] == (1573.7 - 1567.8) * 100 / 1567.8
    (tick,) = to_kite_ticks(decode(frame))
    assert tick["last_price"] == 1573.7
    assert tick["average_traded_price"] == 1570.37
    assert tick["ohlc"] == {"open": 1569.15, "high": 1575.0, "low": 1561.05, "close": 1567.8}
    stamp = datetime(2021, 7, 5, 10, 41, 27, tzinfo=IST)
    assert tick["last_trade_time"] == tick["exchange_timestamp"] == stamp
    assert (tick["oi"], tick["oi_day_high"], tick["oi_day_low"]) == (0, 0, 0)
    assert tick["depth"]["buy"][0] == {"quantity": 5, "price": 1573.4, "orders": 1}
    assert tick["depth"]["sell"][0] == {"quantity": 172, "price": 1573.7, "orders": 3}
    assert tick["depth"]["sell"][4] == {"quantity": 724, "price": 1573.95, "orders": 5}
    assert math.isclose(tick["change"], 0.3763235, rel_tol=1e-7)
    assert_same(KITE._parse_binary(frame), [tick])


# --------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("frame", [b"", HEARTBEAT, b"\xff", b"\x00\x00"])
def test_heartbeats_and_empty_frames_yield_no_rows(frame: bytes) -> None:
    stats = DecodeStats()
    rows = decode(frame, stats)
    assert rows.dtype == TICK_DTYPE
    assert rows.size == 0
    assert stats == DecodeStats(frames=1)


def test_unknown_packet_lengths_are_skipped_and_counted() -> None:
    packets = [ltp_packet(408065, 157315), b"\x01" * 10, b"", quote_packet(265, [5] * 10)]
    frame = frame_of(packets)
    stats = DecodeStats()
    rows = decode(frame, stats)
    assert rows["instrument_token"].tolist() == [408065, 265]
    assert rows["mode"].tolist() == [MODE_LTP, MODE_QUOTE]
    assert stats.unknown_packets == 2
    assert stats.packets == 2
    # kiteconnect drops the 10-byte packet but raises struct.error on the empty one.
    reference = frame_of([p for p in packets if p])
    assert_same(KITE._parse_binary(reference), to_kite_ticks(rows))


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"\x00\x01\x00", "truncated"),
        (b"\x00\x01\x00\x08" + b"\x00" * 7, "exceeds"),
        (frame_of([ltp_packet(1, 2)])[:-1], "exceeds"),
        (b"\x00\x02" + frame_of([ltp_packet(1, 2)])[2:], "truncated"),
        (frame_of([ltp_packet(1, 2)]) + b"\x00", "trailing"),
        (b"\x00\x00\x00", "trailing"),
    ],
)
def test_inconsistent_frames_raise_frame_error(frame: bytes, reason: str) -> None:
    stats = DecodeStats()
    with pytest.raises(FrameError, match=reason):
        decode(frame, stats)
    assert stats.bad_frames == 1
    assert issubclass(FrameError, ValueError)


@pytest.mark.parametrize("count", [2, SMALL_BATCH + 3])
def test_decode_many_skips_a_bad_frame_and_keeps_frame_index(count: int) -> None:
    good_a = frame_of([ltp_packet(408065, 1), ltp_packet(408065, 2)])
    good_b = frame_of([quote_packet(265, [7] * 10)])
    bad = good_a[:-3]
    frames = [good_a, bad, HEARTBEAT, good_b] + [HEARTBEAT] * (count - 2)
    stats = DecodeStats()
    rows, frame_index = decode_many(frames, stats)
    assert rows["instrument_token"].tolist() == [408065, 408065, 265]
    assert rows["last_price"].tolist() == [0.01, 0.02, 0.07]
    assert frame_index.tolist() == [0, 0, 3]
    assert stats == DecodeStats(frames=len(frames), packets=3, unknown_packets=0, bad_frames=1)


def test_stride_test_rejects_mixed_frames_whose_size_looks_uniform() -> None:
    """Lengths 28, 8, 44, 32 average 28: size matches 4 packets of 28 bytes, headers do not."""
    packets = [
        index_packet(265, [1] * 6),
        ltp_packet(408065, 2),
        quote_packet(408065, [3] * 10),
        index_packet(265, [4] * 6, 5),
    ]
    frame = frame_of(packets)
    assert len(frame) == 2 + 4 * (2 + 28)
    frames = [frame] * (SMALL_BATCH + 1)
    rows, frame_index = decode_many(frames)
    assert rows["packet_length"].tolist() == [28, 8, 44, 32] * len(frames)
    assert_rows_equal(rows, concat_rows([decode(frame)] * len(frames)))
    assert frame_index.tolist() == [i for i in range(len(frames)) for _ in range(4)]


def test_decode_many_of_nothing() -> None:
    rows, frame_index = decode_many([])
    assert rows.size == 0
    assert rows.dtype == TICK_DTYPE
    assert frame_index.size == 0


@pytest.mark.parametrize(
    ("segment", "divisor"),
    [
        (1, 100.0),
        (2, 100.0),
        (3, 1e7),
        (4, 100.0),
        (6, 1e4),
        (9, 100.0),
        (12, 1e4),
        (0, 100.0),
        (255, 100.0),
    ],
)
def test_price_divisor_per_segment(segment: int, divisor: float) -> None:
    raw = [0, 1, 157315, 2**31 + 7, U32_MAX]
    frame = frame_of([ltp_packet((1594 << 8) | segment, value) for value in raw])
    rows = decode(frame)
    assert rows["last_price"].tolist() == [value / divisor for value in raw]
    assert rows["segment"].tolist() == [segment] * len(raw)
    assert rows["tradable"].tolist() == [segment != 9] * len(raw)
    assert_same(KITE._parse_binary(frame), to_kite_ticks(rows))


def test_index_packets_keep_the_signed_price_change() -> None:
    packet = index_packet(256265, [2_000_000, 2_010_000, 1_990_000, 2_000_100, 2_000_036, 0])
    packet = packet[:24] + bytes.fromhex("FFFFFFDC")
    (row,) = decode(frame_of([packet]))
    assert row["price_change_raw"] == -36
    assert (row["segment"], bool(row["tradable"]), row["mode"]) == (9, False, MODE_QUOTE)
    assert (row["high"], row["low"], row["open"], row["close"]) == (
        20100.0,
        19900.0,
        20001.0,
        20000.36,
    )
    assert encode(np.array([row])) == frame_of([packet])
    (tick,) = to_kite_ticks(np.array([row]))
    assert list(tick) == ["tradable", "mode", "instrument_token", "last_price", "ohlc", "change"]
    assert list(tick["ohlc"]) == ["high", "low", "open", "close"]


def test_zero_close_gives_int_zero_change_and_zero_epoch_is_a_datetime() -> None:
    frame = frame_of([full_packet(408065, [100] + [0] * 14, [(0, 0, 0)] * 10)])
    (tick,) = to_kite_ticks(decode(frame))
    assert tick["change"] == 0
    assert type(tick["change"]) is int
    assert tick["last_trade_time"] == datetime(1970, 1, 1, 5, 30, tzinfo=IST)
    assert tick["exchange_timestamp"] == datetime(1970, 1, 1, 5, 30, tzinfo=IST)
    assert_same(KITE._parse_binary(frame), [tick])


def test_large_mixed_batch_across_chunks_matches_per_frame_decoding() -> None:
    uniform = frame_of([full_packet((i << 8) | 2, [i] * 15, [(i, i, 1)] * 10) for i in range(600)])
    mixed = frame_of([ltp_packet(777 << 8 | 3, 5), index_packet(265, [9] * 6, 7), b"12345"])
    frames: list[bytes] = []
    for i in range(60):
        frames.append([uniform, mixed, HEARTBEAT, uniform[:-1]][i % 4])
    frames.insert(7, uniform)
    stats = DecodeStats()
    rows, frame_index = decode_many(frames, stats)
    assert rows.size > 4096 * 2  # several decoding chunks
    expected_index: list[int] = []
    parts = []
    for i, frame in enumerate(frames):
        if len(frame) == len(uniform) - 1:  # the truncated copy
            continue
        part = decode(frame)
        parts.append(part)
        expected_index += [i] * part.size
    assert_rows_equal(rows, concat_rows(parts))
    assert frame_index.tolist() == expected_index
    assert stats.bad_frames == sum(len(f) == len(uniform) - 1 for f in frames)
    ticks = to_kite_ticks(rows)
    expected_ticks = [
        t for f in frames if len(f) != len(uniform) - 1 for t in KITE._parse_binary(f)
    ]
    assert_same(expected_ticks, ticks)


def test_decoding_in_threads_gives_the_same_rows() -> None:
    frame = frame_of([full_packet((i << 8) | 3, [i] * 15, [(i, i, 2)] * 10) for i in range(500)])
    expected = decode(frame)
    results: list[np.ndarray] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(20):
            rows, _ = decode_many([frame] * 6)
            with lock:
                results.append(rows)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 60
    for rows in results:
        assert_rows_equal(rows, concat_rows([expected] * 6))


# --------------------------------------------------------------------------- encoding


def test_encode_frames_splits_and_round_trips() -> None:
    frame = frame_of([quote_packet((i << 8) | 1, [i] * 10) for i in range(1200)])
    rows = decode(frame)
    frames = encode_frames(rows, max_packets_per_frame=500)
    assert [struct.unpack(">H", f[:2])[0] for f in frames] == [500, 500, 200]
    decoded, frame_index = decode_many(frames)
    assert_rows_equal(decoded, rows)
    assert np.bincount(frame_index).tolist() == [500, 500, 200]
    assert encode(rows[:0]) == b"\x00\x00"
    assert encode_frames(rows[:0]) == []


def _valid_row() -> np.ndarray:
    return decode(frame_of([full_packet(408065, [1] * 15, [(1, 1, 1)] * 10)]))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("packet_length", 10),
        ("last_price", -0.01),
        ("last_price", float("nan")),
        ("last_price", float("inf")),
        ("last_price", 5e7),
        ("volume_traded", 2**32),
        ("oi", -1),
        ("bid_orders", 0x10000),
        ("ask_qty", -5),
        ("instrument_token", 2**32),
    ],
)
def test_encode_rejects_values_that_do_not_fit(field: str, value: float) -> None:
    rows = _valid_row()
    rows[field] = value
    with pytest.raises(ValueError, match=r"packet|fit"):
        encode(rows)


def test_encode_rejects_other_dtypes_and_too_many_rows() -> None:
    with pytest.raises(ValueError, match="TICK_DTYPE"):
        encode(np.zeros(1, dtype=[("instrument_token", "i8")]))
    rows = np.zeros(0x10000, dtype=TICK_DTYPE)
    rows["packet_length"] = 8
    with pytest.raises(ValueError, match="65535"):
        encode(rows)
    assert len(encode_frames(rows, 0xFFFF)) == 2
    with pytest.raises(ValueError, match="max_packets_per_frame"):
        encode_frames(rows, 0)


def test_encode_writes_prices_with_the_segment_divisor() -> None:
    rows = np.zeros(3, dtype=TICK_DTYPE)
    rows["packet_length"] = 8
    rows["instrument_token"] = [(1 << 8) | 3, (1 << 8) | 6, (1 << 8) | 1]
    rows["last_price"] = [83.1234567, 83.1234, 1573.15]
    frame = encode(rows)
    assert frame == frame_of(
        [
            ltp_packet((1 << 8) | 3, 831234567),
            ltp_packet((1 << 8) | 6, 831234),
            ltp_packet(257, 157315),
        ]
    )
    assert packet_lengths(frame) == [8, 8, 8]
