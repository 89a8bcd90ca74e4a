"""TickBatch, OrderUpdate and Outage contracts, and the streamer's Batcher."""

from __future__ import annotations

import asyncio
import base64
import uuid

import msgpack
import pytest
from kombu.serialization import dumps, loads
from pydantic import ValidationError

from schemas.feed import Outage
from schemas.ticks import OrderUpdate, TickBatch
from workers.streamer.batcher import Batcher

FRAMES = [b"\x00\x01\x00\x08" + bytes(range(8)), b"\x00", b"\xff\xfe\x00\x80binary"]


def make_batch(**overrides) -> TickBatch:
    values = {
        "batch_id": uuid.uuid4().hex,
        "source": "stream",
        "account_id": "ACC1",
        "connection": "ACC1:0",
        "seq": 1_700_000_000_000_000,
        "received_at": [1.5, 2.25, 3.125],
        "frames": FRAMES,
    }
    values.update(overrides)
    return TickBatch.model_validate(values)


# --------------------------------------------------------------------------- TickBatch


def test_msgpack_round_trip_keeps_frames_as_bytes():
    batch = make_batch()
    packed = msgpack.packb(batch.to_message(), use_bin_type=True)
    message = msgpack.unpackb(packed, raw=False)
    assert all(type(frame) is bytes for frame in message["frames"])
    again = TickBatch.from_message(message)
    assert again == batch
    assert again.frames == FRAMES


def test_kombu_msgpack_serializer_keeps_frames_as_bytes():
    # The serializer Celery uses for the ticks queue.
    content_type, encoding, body = dumps(make_batch().to_message(), serializer="msgpack")
    message = loads(body, content_type, encoding, accept=["application/x-msgpack"])
    assert message["frames"] == FRAMES
    assert TickBatch.from_message(message).frames == FRAMES


def test_json_carries_frames_as_base64_both_alphabets_accepted():
    batch = make_batch()
    text = batch.model_dump_json()
    assert TickBatch.model_validate_json(text) == batch
    standard = {**batch.to_message(), "frames": [base64.b64encode(f).decode() for f in FRAMES]}
    assert TickBatch.from_message(standard).frames == FRAMES
    schema = TickBatch.model_json_schema()
    assert schema["properties"]["frames"]["items"]["type"] == "string"


@pytest.mark.parametrize(
    ("overrides", "where"),
    [
        ({"received_at": [1.0, 2.0]}, "received_at has 2 entries for 3 frames"),
        ({"batch_id": "not-a-uuid"}, "batch_id"),
        ({"seq": -1}, "seq"),
        ({"source": "live"}, "source"),
        ({"frames": [], "received_at": []}, "frames"),
        ({"account_id": ""}, "account_id"),
        ({"unexpected": 1}, "unexpected"),
    ],
)
def test_invalid_batches_are_rejected(overrides, where):
    with pytest.raises(ValidationError) as caught:
        make_batch(**overrides)
    assert where in str(caught.value)


def test_missing_field_is_rejected():
    message = make_batch().to_message()
    del message["connection"]
    with pytest.raises(ValidationError, match="connection"):
        TickBatch.from_message(message)


# --------------------------------------------------------------------------- OrderUpdate


def test_order_update_needs_order_id_and_status():
    with pytest.raises(ValidationError, match="order_id"):
        OrderUpdate(account_id="ACC1", received_at=1.0, data={"status": "OPEN"})
    with pytest.raises(ValidationError, match="status"):
        OrderUpdate(account_id="ACC1", received_at=1.0, data={"order_id": "1", "status": ""})


def test_order_update_timestamp_prefers_the_exchange_time():
    data = {"order_id": "1", "status": "OPEN", "order_timestamp": "2024-01-01 09:15:00"}
    update = OrderUpdate(account_id="ACC1", received_at=1.0, data=data)
    assert update.update_timestamp == "2024-01-01 09:15:00"
    data["exchange_update_timestamp"] = "2024-01-01 09:15:01"
    update = OrderUpdate(account_id="ACC1", received_at=1.0, data=data)
    assert update.update_timestamp == "2024-01-01 09:15:01"
    assert OrderUpdate(account_id="A", received_at=1.0, data=data).order_id == "1"


# --------------------------------------------------------------------------- Outage


def test_outage_fields_round_trip_through_redis_types():
    outage = Outage(
        account_id="ACC1",
        connection="ACC1:2",
        tokens=[256265, 408065],
        start=1_700_000_000.123456,
        end=1_700_000_042.5,
        reason="silent",
    )
    fields = outage.to_fields()
    assert all(isinstance(value, str) for value in fields.values())
    as_bytes = {key.encode(): value.encode() for key, value in fields.items()}
    assert Outage.from_fields(as_bytes) == outage
    assert Outage.from_fields(fields) == outage
    empty = outage.model_copy(update={"tokens": []})
    assert Outage.from_fields(empty.to_fields()).tokens == []


def test_outage_cannot_end_before_it_starts():
    with pytest.raises(ValidationError, match="before start"):
        Outage(account_id="A", connection="A:0", tokens=[], start=2.0, end=1.0, reason="x")


# --------------------------------------------------------------------------- Batcher


def test_batcher_flushes_full_batches_with_consecutive_seqs():
    flushed: list[TickBatch] = []

    async def scenario() -> Batcher:
        batcher = Batcher(
            3, 60.0, flushed.append, account_id="ACC1", connection="ACC1:0", first_seq=10
        )
        for i in range(7):
            batcher.add(bytes([i]), 100.0 + i)
        assert batcher.pending == 1
        batcher.close()
        return batcher

    batcher = asyncio.run(scenario())
    assert [b.seq for b in flushed] == [10, 11, 12]
    assert [b.frames for b in flushed] == [
        [b"\x00", b"\x01", b"\x02"],
        [b"\x03", b"\x04", b"\x05"],
        [b"\x06"],
    ]
    assert [b.received_at for b in flushed][2] == [106.0]
    assert len({b.batch_id for b in flushed}) == 3
    assert all(b.source == "stream" and b.connection == "ACC1:0" for b in flushed)
    assert batcher.next_seq == 13
    with pytest.raises(RuntimeError):
        batcher.add(b"x", 1.0)


def test_batcher_flushes_a_partial_batch_after_the_delay():
    async def scenario() -> list[TickBatch]:
        flushed: list[TickBatch] = []
        done = asyncio.Event()

        def on_flush(batch: TickBatch) -> None:
            flushed.append(batch)
            done.set()

        batcher = Batcher(100, 0.01, on_flush, account_id="ACC1", connection="ACC1:1")
        batcher.add(b"a", 1.0)
        batcher.add(b"b", 2.0)
        await asyncio.wait_for(done.wait(), timeout=10)
        return flushed

    flushed = asyncio.run(scenario())
    assert len(flushed) == 1
    assert flushed[0].frames == [b"a", b"b"]


def test_batcher_seeds_seq_from_the_clock_so_restarts_continue_above():
    first = Batcher(1, 1.0, lambda _: None, account_id="A", connection="A:0")
    second = Batcher(1, 1.0, lambda _: None, account_id="A", connection="A:0")
    assert second.next_seq > first.next_seq
