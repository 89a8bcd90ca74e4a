"""Raw-frame capture files: naming, byte-for-byte round trip, torn tails, replay batching."""

from __future__ import annotations

import datetime as dt
import os
import random

import pytest

from workers.replay import plan_batches, replay_command
from workers.streamer.capture import (
    MAGIC,
    CapturedFrame,
    CaptureFormatError,
    CaptureReader,
    CaptureWriter,
    capture_path,
    trading_day,
)

IST = dt.timezone(dt.timedelta(hours=5, minutes=30))
# 2024-03-04 23:59:59 IST and the next day's first seconds.
BEFORE_MIDNIGHT = dt.datetime(2024, 3, 4, 23, 59, 59, tzinfo=IST).timestamp()


def random_frames(count: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randint(0, 3000)) for _ in range(count)]


def test_capture_path_is_one_file_per_connection_per_day(tmp_path):
    day = dt.date(2024, 3, 4)
    assert capture_path(tmp_path, "ACC1", "ACC1:0", day) == tmp_path / "2024-03-04/ACC1_0.frames"
    assert capture_path(tmp_path, "ACC1", "other/x", day).name == "ACC1_other-x.frames"


def test_trading_day_is_the_date_in_india():
    assert trading_day(BEFORE_MIDNIGHT) == dt.date(2024, 3, 4)
    assert trading_day(BEFORE_MIDNIGHT + 2) == dt.date(2024, 3, 5)


def test_frames_read_back_byte_for_byte_with_their_receive_times(tmp_path):
    frames = [*random_frames(300), b"", b"\x00"]
    times = [BEFORE_MIDNIGHT - 1000 + i * 0.001 for i in range(len(frames))]
    writer = CaptureWriter(tmp_path, "ACC1", "ACC1:0")
    for at, frame in zip(times, frames, strict=True):
        writer.write(at, frame)
    writer.close()
    assert writer.errors == 0
    path = capture_path(tmp_path, "ACC1", "ACC1:0", dt.date(2024, 3, 4))
    assert path.read_bytes().startswith(MAGIC)

    reader = CaptureReader(path)
    assert (reader.account_id, reader.connection) == ("ACC1", "ACC1:0")
    got = list(reader)
    assert [item.frame for item in got] == frames
    assert [item.received_at for item in got] == times
    assert not reader.truncated


def test_a_new_file_starts_at_midnight_india_time(tmp_path):
    writer = CaptureWriter(tmp_path, "ACC1", "ACC1:1")
    writer.write(BEFORE_MIDNIGHT, b"day one")
    writer.write(BEFORE_MIDNIGHT + 2, b"day two")
    writer.close()
    first = capture_path(tmp_path, "ACC1", "ACC1:1", dt.date(2024, 3, 4))
    second = capture_path(tmp_path, "ACC1", "ACC1:1", dt.date(2024, 3, 5))
    assert [f.frame for f in CaptureReader(first)] == [b"day one"]
    assert [f.frame for f in CaptureReader(second)] == [b"day two"]


def test_reopening_appends_after_cutting_a_torn_record(tmp_path):
    writer = CaptureWriter(tmp_path, "ACC1", "ACC1:0")
    writer.write(BEFORE_MIDNIGHT - 10, b"first")
    writer.close()
    path = writer.path
    assert path is not None
    with open(path, "ab") as handle:  # a record cut short by a crash
        handle.write(b"\x41\xd9\x00\x00\x00\x00\x00\x00\x00\x00\x00\x10abc")
    reader = CaptureReader(path)
    assert [f.frame for f in reader] == [b"first"]
    assert reader.truncated

    writer = CaptureWriter(tmp_path, "ACC1", "ACC1:0")
    writer.write(BEFORE_MIDNIGHT - 5, b"second")
    writer.close()
    reader = CaptureReader(path)
    assert [f.frame for f in reader] == [b"first", b"second"]
    assert not reader.truncated


def test_foreign_or_mismatched_files_are_refused(tmp_path):
    other = tmp_path / "x.frames"
    other.write_bytes(b"something else")
    with pytest.raises(CaptureFormatError):
        CaptureReader(other)
    path = capture_path(tmp_path, "ACC1", "ACC1:0", dt.date(2024, 3, 4))
    path.parent.mkdir(parents=True)
    os.replace(other, path)
    writer = CaptureWriter(tmp_path, "ACC1", "ACC1:0")
    writer.write(BEFORE_MIDNIGHT, b"frame")  # never raises: capture is disabled instead
    assert writer.errors == 1
    assert path.read_bytes() == b"something else"


def test_replay_batches_like_the_streamer():
    frames = [CapturedFrame(t, bytes([i])) for i, t in enumerate([0.0, 0.01, 0.02, 0.5, 0.51])]
    groups = list(plan_batches(frames, max_frames=2, max_delay_s=0.05))
    assert [[f.frame for f in g] for g in groups] == [
        [b"\x00", b"\x01"],
        [b"\x02"],
        [b"\x03", b"\x04"],
    ]
    groups = list(plan_batches(frames, max_frames=10, max_delay_s=0.05))
    assert [len(g) for g in groups] == [3, 2]


def test_replay_command_refuses_missing_or_foreign_files(tmp_path, settings, capsys):
    assert replay_command(str(tmp_path / "missing.frames"), None, settings) == 2
    foreign = tmp_path / "foreign.frames"
    foreign.write_bytes(b"GIF89a")
    assert replay_command(str(foreign), None, settings) == 2
    assert "not a frame capture file" in capsys.readouterr().out
    assert replay_command(str(foreign), -1.0, settings) == 2
