"""Memory buffer, on-disk journal and Delivery through a broker outage (fake broker)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from schemas.ticks import TickBatch
from ticker_tasks.errors import ConfigError, ServiceUnavailable
from workers.streamer.delivery import Delivery, batch_size, encode_record
from workers.streamer.journal import SEGMENT_MAGIC, BoundedBuffer, Journal
from workers.streamer.stats import DeliveryCollector

# --------------------------------------------------------------------------- BoundedBuffer


def test_buffer_holds_at_most_max_bytes_in_fifo_order():
    buffer: BoundedBuffer[str] = BoundedBuffer(10)
    buffer.push("a", 4)
    buffer.push("b", 6)
    assert not buffer.fits(1)
    with pytest.raises(OverflowError):
        buffer.push("c", 1)
    assert (buffer.peek(), len(buffer), buffer.size_bytes) == ("a", 2, 10)
    assert buffer.pop() == ("a", 4)
    assert buffer.fits(4)
    assert buffer.pop() == ("b", 6)
    assert buffer.peek() is None
    with pytest.raises(IndexError):
        buffer.pop()


# --------------------------------------------------------------------------- Journal


def records(n: int, size: int = 100) -> list[bytes]:
    return [i.to_bytes(4, "big") + bytes([i % 256]) * (size - 4) for i in range(n)]


def drain(journal: Journal) -> list[bytes]:
    out = []
    while (record := journal.peek()) is not None:
        out.append(record)
        journal.pop()
    return out


def test_journal_returns_records_in_order_across_segments(tmp_path):
    journal = Journal(tmp_path, max_bytes=1 << 20, segment_bytes=1000)
    data = records(50)
    assert all(journal.append(record) for record in data)
    assert len(journal) == 50
    assert len(list(tmp_path.glob("*.seg"))) > 3
    assert drain(journal) == data
    assert len(journal) == 0
    # Read segments are deleted; an empty journal keeps no file.
    assert list(tmp_path.glob("*.seg")) == []
    assert journal.append(b"again")
    assert drain(journal) == [b"again"]
    journal.close()


def test_journal_refuses_records_beyond_its_bound(tmp_path):
    journal = Journal(tmp_path, max_bytes=1000, segment_bytes=400)
    accepted = [record for record in records(20) if journal.append(record)]
    assert 0 < len(accepted) < 20
    assert journal.size_bytes <= 1000
    assert sum(p.stat().st_size for p in tmp_path.glob("*.seg")) <= 1000
    assert drain(journal) == accepted
    # Space comes back once records are read.
    assert journal.append(records(1)[0])
    journal.close()


def test_journal_survives_a_restart_and_resumes_after_what_was_read(tmp_path):
    data = records(30)
    journal = Journal(tmp_path, max_bytes=1 << 20, segment_bytes=1000)
    for record in data:
        journal.append(record)
    for _ in range(12):
        journal.peek()
        journal.pop()
    journal.close()

    reopened = Journal(tmp_path, max_bytes=1 << 20, segment_bytes=1000)
    assert len(reopened) == 18
    assert drain(reopened) == data[12:]
    reopened.close()


def test_journal_after_a_crash_replays_its_first_segment_again_and_cuts_a_torn_tail(tmp_path):
    data = records(10)
    live, crashed = tmp_path / "live", tmp_path / "crashed"
    journal = Journal(live, max_bytes=1 << 20, segment_bytes=1 << 20)
    for record in data:
        journal.append(record)
    journal.peek()
    journal.pop()
    # What a process killed now leaves on disk: every append was flushed, no cursor saved,
    # and its last record was half written.
    crashed.mkdir()
    for segment in live.glob("*.seg"):
        (crashed / segment.name).write_bytes(segment.read_bytes() + b"\x00\x00\x01\x00\x12\x34")
    journal.close()

    reopened = Journal(crashed, max_bytes=1 << 20, segment_bytes=1 << 20)
    assert reopened.corrupt_bytes == 6
    assert drain(reopened) == data  # at least once: the record read before is sent again
    assert reopened.append(b"next")
    assert drain(reopened) == [b"next"]
    reopened.close()


def test_journal_ignores_foreign_files(tmp_path):
    (tmp_path / "000000000001.seg").write_bytes(b"not a journal")
    (tmp_path / "notes.seg").write_bytes(SEGMENT_MAGIC)
    journal = Journal(tmp_path, max_bytes=1 << 20)
    assert len(journal) == 0
    assert journal.append(b"x")
    assert drain(journal) == [b"x"]
    journal.close()


def test_one_process_per_journal_directory(tmp_path):
    journal = Journal(tmp_path, max_bytes=1 << 20)
    with pytest.raises(ConfigError, match="in use by another process"):
        Journal(tmp_path, max_bytes=1 << 20)
    journal.close()
    Journal(tmp_path, max_bytes=1 << 20).close()


# --------------------------------------------------------------------------- Delivery


class FakeBroker:
    """A broker that is up or down; records what it accepted."""

    def __init__(self) -> None:
        self.up = False
        self.received: list[dict[str, Any]] = []

    def publish(self, message: dict[str, Any]) -> None:
        if not self.up:
            raise ServiceUnavailable("broker: connection refused")
        self.received.append(message)

    def probe_target(self) -> None:
        return None

    def close(self) -> None:
        pass


def batch(seq: int, frames: int = 2, connection: str = "ACC1:0") -> TickBatch:
    return TickBatch(
        batch_id=uuid.uuid4().hex,
        source="stream",
        account_id="ACC1",
        connection=connection,
        seq=seq,
        received_at=[float(seq)] * frames,
        frames=[bytes([seq % 256]) * 50] * frames,
    )


def delivery(broker: FakeBroker, directory: Path, *, buffered: int, journal_bytes: int):
    return Delivery(
        broker,
        buffer=BoundedBuffer(buffered * batch_size(batch(0))),
        journal=Journal(directory, max_bytes=journal_bytes, segment_bytes=1024),
        reconnect_max_s=0.2,
        probe_timeout_s=1.0,
    )


async def until(predicate, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")


def test_outage_buffers_then_journals_then_delivers_everything_in_order(tmp_path):
    broker = FakeBroker()

    async def scenario() -> Delivery:
        sink = delivery(broker, tmp_path, buffered=5, journal_bytes=1 << 20)
        runner = asyncio.create_task(sink.run())
        for seq in range(40):
            assert sink.submit(batch(seq, connection=f"ACC1:{seq % 2}"))
        await until(lambda: sink.stats.outages == 1)
        stats = sink.stats
        assert not stats.broker_up
        assert stats.buffer_batches == 5
        assert stats.journal_batches == 35
        broker.up = True
        assert await sink.drain(timeout_s=30)
        for seq in range(40, 45):  # new batches follow the backlog
            sink.submit(batch(seq))
        assert await sink.drain(timeout_s=30)
        sink.stop()
        await asyncio.wait_for(runner, timeout=10)
        sink.close()
        return sink

    sink = asyncio.run(scenario())
    assert [m["seq"] for m in broker.received] == list(range(45))
    assert all(type(f) is bytes for m in broker.received for f in m["frames"])
    assert sink.stats.batches_sent == 45
    assert sink.stats.frames_dropped == 0


def test_full_journal_drops_the_newest_and_counts_them(tmp_path):
    broker = FakeBroker()

    async def scenario() -> tuple[Delivery, list[int]]:
        sink = delivery(broker, tmp_path, buffered=3, journal_bytes=1024)
        runner = asyncio.create_task(sink.run())
        dropped = [seq for seq in range(30) if not sink.submit(batch(seq, frames=3))]
        stats = sink.stats
        assert stats.buffer_bytes <= 3 * batch_size(batch(0))
        assert stats.journal_bytes <= 1024
        broker.up = True
        assert await sink.drain(timeout_s=30)
        sink.stop()
        await asyncio.wait_for(runner, timeout=10)
        sink.close()
        return sink, dropped

    sink, dropped = asyncio.run(scenario())
    sent = [m["seq"] for m in broker.received]
    assert dropped, "the bounds should have been exceeded"
    assert sent == sorted(sent)
    assert sorted(sent + dropped) == list(range(30))
    # What survives is the oldest data; only the newest batches are dropped.
    assert min(dropped) > max(sent)
    assert sink.stats.batches_dropped == len(dropped)
    assert sink.stats.frames_dropped == 3 * len(dropped)
    # ... and reported to Prometheus by the streamer's own registry.
    registry = CollectorRegistry()
    registry.register(DeliveryCollector(lambda: sink.stats))
    dropped_frames = registry.get_sample_value("ticker_tasks_streamer_frames_dropped_total")
    assert dropped_frames == 3 * len(dropped)
    assert registry.get_sample_value("ticker_tasks_streamer_broker_up") == 1.0


def test_unsent_batches_survive_a_restart_in_order(tmp_path):
    broker = FakeBroker()

    async def first_run() -> None:
        sink = delivery(broker, tmp_path, buffered=4, journal_bytes=1 << 20)
        runner = asyncio.create_task(sink.run())
        for seq in range(10):
            sink.submit(batch(seq))
        await until(lambda: sink.stats.outages == 1)
        sink.stop()
        await asyncio.wait_for(runner, timeout=10)
        sink.close()  # memory goes to the journal

    async def second_run() -> None:
        broker.up = True
        sink = delivery(broker, tmp_path, buffered=4, journal_bytes=1 << 20)
        assert sink.pending == 10
        runner = asyncio.create_task(sink.run())
        sink.submit(batch(10))
        assert await sink.drain(timeout_s=30)
        sink.stop()
        await asyncio.wait_for(runner, timeout=10)
        sink.close()

    asyncio.run(first_run())
    assert broker.received == []
    asyncio.run(second_run())
    assert [m["seq"] for m in broker.received] == list(range(11))


def test_journal_record_is_the_task_message(tmp_path):
    import msgpack

    original = batch(7)
    assert msgpack.unpackb(encode_record(original), raw=False) == original.to_message()


def test_the_reconnect_probe_needs_an_answer_not_just_a_connect(tmp_path):
    from workers.streamer.sender import ProbeTarget

    async def serve(reply: bytes) -> asyncio.Server:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(6)
            if reply:
                writer.write(reply)
                await writer.drain()
            else:
                await reader.read()  # a hung broker: accepts, never answers
            writer.close()

        return await asyncio.start_server(handle, "127.0.0.1", 0)

    class Probed(FakeBroker):
        target: ProbeTarget | None = None

        def probe_target(self) -> ProbeTarget | None:  # type: ignore[override]
            return self.target

    async def scenario() -> list[bool]:
        broker = Probed()
        sink = Delivery(
            broker,
            buffer=BoundedBuffer(1000),
            journal=Journal(tmp_path, max_bytes=1 << 20),
            reconnect_max_s=0.2,
            probe_timeout_s=0.2,
        )
        outcomes = []
        for reply in (b"", b"+PONG\r\n"):
            server = await serve(reply)
            port = server.sockets[0].getsockname()[1]
            broker.target = ProbeTarget("127.0.0.1", port, b"PING\r\n")
            outcomes.append(await sink._probe())
            server.close()
            await server.wait_closed()
        broker.target = ProbeTarget("127.0.0.1", port, b"PING\r\n")  # nothing listens now
        outcomes.append(await sink._probe())
        sink.close()
        return outcomes

    assert asyncio.run(scenario()) == [False, True, False]
