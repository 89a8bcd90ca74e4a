"""Throughput benchmark: :func:`ticker_tasks.kite.codec.decode_many` vs kiteconnect.

Both decoders run in the same process on the same full-mode (184-byte packet) frames; the CLI
wires :func:`run_codec_bench` to ``ticker-tasks bench codec [--json]``.
"""

from __future__ import annotations

import time
from typing import Any, Final

import numpy as np

from ticker_tasks.kite.codec import TICK_DTYPE, decode_many, encode
from ticker_tasks.kite.codec_layout import DEPTH_LEVELS, DIVISORS, LEN_FULL

#: Roughly this many packets per :func:`decode_many` call.
BATCH_PACKETS: Final = 10_000
_SEGMENTS: Final = np.array([1, 2, 3, 4, 5, 6, 7, 8, 12], dtype=np.int64)


def make_full_frames(frames: int, packets_per_frame: int, seed: int = 7) -> list[bytes]:
    """Build deterministic frames of full-mode packets with plausible random values.

    Args:
        frames: Number of frames.
        packets_per_frame: Packets in each frame (1..65535).
        seed: Random seed.

    Returns:
        The encoded frames.
    """
    rng = np.random.default_rng(seed)
    count = frames * packets_per_frame
    rows = np.zeros(count, dtype=TICK_DTYPE)
    rows["packet_length"] = LEN_FULL
    segment = rng.choice(_SEGMENTS, count)
    rows["instrument_token"] = (rng.integers(1, 1 << 24, count) << 8) | segment
    divisor = DIVISORS[segment]
    for name in ("last_price", "average_traded_price", "open", "high", "low", "close"):
        rows[name] = rng.integers(1, 50_000_000, count) / divisor
    for name in ("last_traded_quantity", "volume_traded", "total_buy_quantity"):
        rows[name] = rng.integers(0, 10_000_000, count)
    rows["total_sell_quantity"] = rng.integers(0, 10_000_000, count)
    rows["last_trade_time"] = rows["exchange_timestamp"] = rng.integers(
        1_600_000_000, 1_800_000_000, count
    )
    for side in ("bid", "ask"):
        rows[f"{side}_qty"] = rng.integers(0, 100_000, (count, DEPTH_LEVELS))
        raw = rng.integers(1, 50_000_000, (count, DEPTH_LEVELS))
        rows[f"{side}_price"] = raw / divisor[:, None]
        rows[f"{side}_orders"] = rng.integers(0, 500, (count, DEPTH_LEVELS))
    return [encode(rows[i : i + packets_per_frame]) for i in range(0, count, packets_per_frame)]


def _bench_kiteconnect(frames: list[bytes], seconds: float) -> float:
    """Packets per second of ``KiteTicker._parse_binary`` called on each frame in turn."""
    from kiteconnect import KiteTicker  # heavy import (Twisted), needed only here

    ticker: Any = KiteTicker("k", "t")
    packets = 0
    start = time.perf_counter()
    elapsed = 0.0
    while elapsed < seconds:
        for frame in frames:
            packets += len(ticker._parse_binary(frame))
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
    return packets / elapsed


def _bench_codec(frames: list[bytes], seconds: float) -> float:
    """Packets per second of :func:`decode_many` over the whole batch of frames."""
    packets = 0
    start = time.perf_counter()
    elapsed = 0.0
    while elapsed < seconds:
        rows, _ = decode_many(frames)
        packets += rows.size
        elapsed = time.perf_counter() - start
    return packets / elapsed


def run_codec_bench(seconds: float = 3.0, packets_per_frame: int = 100) -> dict[str, float]:
    """Measure our decoder against kiteconnect's on the same full-mode frames.

    Half of ``seconds`` goes to each decoder. The batch holds about
    :data:`BATCH_PACKETS` packets.

    Args:
        seconds: Total measuring time.
        packets_per_frame: Full-mode packets in each frame.

    Returns:
        ``decode_pkts_per_s``, ``kiteconnect_pkts_per_s``, their ``ratio``, the number of
        ``frames`` in the batch and ``packets_per_frame``.
    """
    if seconds <= 0 or not 1 <= packets_per_frame <= 0xFFFF:
        raise ValueError("seconds must be > 0 and packets_per_frame in 1..65535")
    frames = make_full_frames(max(1, BATCH_PACKETS // packets_per_frame), packets_per_frame)
    ours = _bench_codec(frames, seconds / 2)
    theirs = _bench_kiteconnect(frames, seconds / 2)
    return {
        "decode_pkts_per_s": ours,
        "kiteconnect_pkts_per_s": theirs,
        "ratio": ours / theirs,
        "frames": float(len(frames)),
        "packets_per_frame": float(packets_per_frame),
    }
