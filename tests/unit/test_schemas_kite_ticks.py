"""schemas.ticks.to_kite_ticks on published messages == the codec's kiteconnect view of rows."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from schemas.ticks import IST, to_kite_ticks
from tests.unit.test_codec import clean_packet_lists, frame_of
from ticker_tasks.kite import codec
from ticker_tasks.kite.codec import TICK_DTYPE, decode_many, encode
from ticker_tasks.pipeline.publish import build_message, channel_messages, encode_message
from ticker_tasks.pipeline.validate import BatchRef

BATCH = BatchRef(batch_id="ab" * 16, connection="ACC:0", seq=3, source="stream")


def wire(message: dict[str, object]) -> dict[str, object]:
    """What a consumer parses: the message as the publisher encodes it, through JSON."""
    parsed: dict[str, object] = json.loads(encode_message(message))
    return parsed


def assert_same_ticks(actual: list[dict[str, object]], expected: list[dict[str, object]]) -> None:
    assert actual == expected
    for got, want in zip(actual, expected, strict=True):
        assert list(got) == list(want)  # key order
        for key in got:
            assert type(got[key]) is type(want[key]), key
        if "ohlc" in got:
            assert list(got["ohlc"]) == list(want["ohlc"])  # type: ignore[call-overload]
        if "depth" in got:
            depth, want_depth = got["depth"], want["depth"]
            for side in ("buy", "sell"):
                for level, want_level in zip(depth[side], want_depth[side], strict=True):  # type: ignore[index]
                    assert [type(v) for v in level.values()] == [
                        type(v) for v in want_level.values()
                    ]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=clean_packet_lists.map(lambda packets: [frame_of(packets)]))
def test_published_message_gives_kiteconnects_ticks(frames: list[bytes]) -> None:
    rows, _ = decode_many(frames)
    received = np.linspace(1.7e9, 1.7e9 + 1, rows.size)
    message = wire(build_message(BATCH, rows, received, np.arange(rows.size)))
    assert_same_ticks(to_kite_ticks(message), codec.to_kite_ticks(rows))


@settings(max_examples=100, deadline=None)
@given(frames=clean_packet_lists.map(lambda packets: [frame_of(packets)]))
def test_channel_messages_split_by_mode_and_keep_the_ticks(frames: list[bytes]) -> None:
    rows, _ = decode_many(frames)
    expected = codec.to_kite_ticks(rows)
    received = np.zeros(rows.size)
    by_mode = channel_messages(BATCH, rows, received, np.arange(rows.size))
    got = []
    for channel, message in by_mode.items():
        ticks = to_kite_ticks(wire(message))
        assert {t["mode"] for t in ticks} == {channel.rsplit(":", 1)[1]}
        got.extend(ticks)
    key = lambda t: json.dumps(t, default=str, sort_keys=True)  # noqa: E731
    assert sorted(got, key=key) == sorted(expected, key=key)


def test_timestamps_are_ist_aware_datetimes() -> None:
    rows = np.zeros(1, dtype=TICK_DTYPE)
    rows["instrument_token"] = 256 * 5 + 1
    rows["packet_length"] = 184
    rows["last_price"] = 10.0
    rows["close"] = 9.0
    rows["exchange_timestamp"] = 1_736_137_800
    rows["last_trade_time"] = 1_736_137_799
    decoded, _ = decode_many([encode(rows)])
    (tick,) = to_kite_ticks(
        wire(build_message(BATCH, decoded, np.zeros(1), np.zeros(1, dtype=np.int64)))
    )
    assert tick["exchange_timestamp"] == dt.datetime(2025, 1, 6, 10, 0, tzinfo=IST)
    assert tick["exchange_timestamp"].utcoffset() == dt.timedelta(hours=5, minutes=30)
    assert isinstance(tick["change"], float)
    assert tick["depth"]["buy"][0] == {"quantity": 0, "price": 0.0, "orders": 0}


def test_unknown_version_is_refused() -> None:
    with pytest.raises(ValueError, match="version"):
        to_kite_ticks({"v": 2, "columns": {}})
