"""Tick batches and order updates through a real Celery worker and the real Redis broker.

The streamer's delivery is tested through a broker outage made with a TCP proxy in a
subprocess in front of the real Redis (the shared Redis is never restarted).
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import msgpack
import numpy as np
import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from schemas.ticks import TickBatch
from tests.support.services import redis_for_tests
from tests.support.workers import celery_worker, producer_app
from ticker_tasks.db.models import Account, Order, OrderEvent
from ticker_tasks.kite.codec import TICK_DTYPE, encode
from ticker_tasks.metrics import Metrics
from ticker_tasks.tasks.orders import UPDATES_STREAM
from ticker_tasks.tasks.ticks import (
    CHECKSUM_KEY,
    FRAMES_KEY,
    PACKETS_KEY,
    PROCESS_BATCH,
    frames_checksum,
)
from workers.replay import replay
from workers.streamer.capture import CaptureWriter
from workers.streamer.delivery import Delivery, batch_size
from workers.streamer.journal import BoundedBuffer, Journal
from workers.streamer.sender import KombuSender

pytestmark = pytest.mark.integration

WAIT_S = 60.0


# --------------------------------------------------------------------------- helpers


def ltp_frame(count: int, first_token: int = 1) -> bytes:
    """A frame of ``count`` LTP packets (NSE segment tokens)."""
    rows = np.zeros(count, dtype=TICK_DTYPE)
    rows["instrument_token"] = [((first_token + i) << 8) | 1 for i in range(count)]
    rows["packet_length"] = 8
    rows["last_price"] = [100.0 + i * 0.05 for i in range(count)]
    return encode(rows)


def make_batch(connection: str, seq: int, frames: list[bytes]) -> TickBatch:
    return TickBatch(
        batch_id=uuid.uuid4().hex,
        source="stream",
        account_id=connection.split(":")[0],
        connection=connection,
        seq=seq,
        received_at=[time.time()] * len(frames),
        frames=frames,
    )


def new_connection() -> str:
    return f"T{uuid.uuid4().hex[:10]}:0"


def hget_int(client: redis.Redis, key: str, field: str) -> int:
    value = client.hget(key, field)
    return int(value) if value is not None else 0


def wait_for(predicate, log: Path | None = None, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            worker_log = log.read_text() if log and log.exists() else "(no worker log)"
            raise AssertionError(f"condition not reached in {timeout_s} s\n{worker_log}")
        time.sleep(0.05)


def send(app, batch: TickBatch) -> None:
    app.send_task(PROCESS_BATCH, kwargs=batch.to_message(), serializer="msgpack", queue="ticks")


@pytest.fixture(scope="module")
def app():
    return producer_app()


@pytest.fixture(scope="module")
def database_url(migrated_postgres_url):
    """The run's database at head (again: a migration test may have downgraded it)."""
    from alembic.config import Config

    from alembic import command

    config = Config(str(Path(__file__).resolve().parents[2] / "alembic.ini"))
    config.attributes["skip_logging"] = True
    config.attributes["url"] = migrated_postgres_url
    command.upgrade(config, "head")
    return migrated_postgres_url


@pytest.fixture(scope="module")
def worker_log(redis_service, database_url, tmp_path_factory):
    """One worker (one pool child: the queues are processed in order) for the module."""
    log = tmp_path_factory.mktemp("tick-worker") / "worker.log"
    env = {"TICKER_REDIS_URL": redis_service.url, "TICKER_DATABASE_URL": database_url}
    with celery_worker(["ticks", "orders"], env=env, concurrency=1, log_path=log):
        yield log


# --------------------------------------------------------------------------- process_batch


def test_the_same_batch_twice_is_counted_once(app, worker_log, redis_client):
    connection = new_connection()
    frames = [ltp_frame(5), ltp_frame(3, first_token=50)]
    batch = make_batch(connection, 1, frames)
    metrics = Metrics(redis_client)

    send(app, batch)
    send(app, batch)

    wait_for(
        lambda: metrics.counter("tick_batches_duplicate", connection=connection) == 1, worker_log
    )
    assert hget_int(redis_client, PACKETS_KEY, connection) == 8
    assert hget_int(redis_client, FRAMES_KEY, connection) == 2
    assert hget_int(redis_client, CHECKSUM_KEY, connection) == frames_checksum(frames)


def test_a_bad_frame_is_counted_and_the_other_frames_are_kept(app, worker_log, redis_client):
    connection = new_connection()
    truncated = ltp_frame(2)[:-3]
    send(app, make_batch(connection, 7, [ltp_frame(4), truncated, ltp_frame(2), b"\x00"]))

    metrics = Metrics(redis_client)
    # The bad-frame metric is counted right after the batch's counters: wait for both.
    wait_for(
        lambda: (
            hget_int(redis_client, FRAMES_KEY, connection) == 4
            and metrics.counter("tick_frames_bad", connection=connection) >= 1
        ),
        worker_log,
    )
    assert hget_int(redis_client, PACKETS_KEY, connection) == 6
    assert metrics.counter("tick_frames_bad", connection=connection) == 1


def test_a_malformed_payload_is_rejected_and_the_worker_keeps_working(
    app, worker_log, redis_client
):
    metrics = Metrics(redis_client)
    before = metrics.counter("tick_batches_rejected", reason="invalid")
    connection = new_connection()
    bad = {**make_batch(connection, 1, [ltp_frame(1)]).to_message(), "received_at": []}
    app.send_task(PROCESS_BATCH, kwargs=bad, serializer="msgpack", queue="ticks")
    app.send_task(PROCESS_BATCH, kwargs={"nonsense": True}, serializer="msgpack", queue="ticks")
    send(app, make_batch(connection, 2, [ltp_frame(3)]))

    wait_for(lambda: hget_int(redis_client, PACKETS_KEY, connection) == 3, worker_log)
    assert metrics.counter("tick_batches_rejected", reason="invalid") == before + 2
    # The rejected batch (seq 1) was not recorded as seen: only seq 2 was counted.
    assert redis_client.zrange(f"ticker_tasks:ticks:seen:{connection}", 0, -1) == [b"2"]


# --------------------------------------------------------------------------- orders.update


def _stream_entries(client: redis.Redis, order_id: str) -> list[dict[bytes, bytes]]:
    entries = client.xrange(UPDATES_STREAM)
    return [fields for _id, fields in entries if fields[b"order_id"] == order_id.encode()]


def test_an_order_update_lands_in_the_stream_and_the_order_history_once(
    app, worker_log, redis_client, db_engine
):
    account_id, broker_order_id = f"A{uuid.uuid4().hex[:8]}", str(uuid.uuid4().int)[:15]
    with Session(db_engine) as session, session.begin():
        session.add(Account(account_id=account_id, api_key=account_id, api_secret_encrypted=b"x"))
        session.flush()
        session.add(
            Order(
                account_id=account_id,
                client_order_id="c1",
                tag="t1",
                broker_order_id=broker_order_id,
                exchange="NSE",
                tradingsymbol="INFY",
                variety="regular",
                transaction_type="BUY",
                order_type="MARKET",
                product="CNC",
                quantity=1,
                status="PUT ORDER REQ RECEIVED",
            )
        )
    base = {"order_id": broker_order_id, "order_timestamp": "2024-03-04 09:15:00"}
    open_update = {**base, "status": "OPEN", "filled_quantity": 0}
    complete = {**base, "status": "COMPLETE", "filled_quantity": 1}

    def update(data):
        kwargs = {"account_id": account_id, "received_at": time.time(), "data": data}
        app.send_task("ticker_tasks.orders.update", kwargs=kwargs, queue="orders")

    update(open_update)
    update(open_update)  # redelivered
    update(complete)
    unknown = str(uuid.uuid4().int)[:15]
    update({"order_id": unknown, "status": "OPEN"})

    wait_for(lambda: len(_stream_entries(redis_client, unknown)) == 1, worker_log)
    entries = _stream_entries(redis_client, broker_order_id)
    assert [e[b"status"] for e in entries] == [b"OPEN", b"COMPLETE"]
    assert json.loads(entries[1][b"data"]) == complete
    with Session(db_engine) as session:
        events = session.scalars(select(OrderEvent).order_by(OrderEvent.event_id)).all()
    assert [(e.status, e.source) for e in events] == [("OPEN", "ws"), ("COMPLETE", "ws")]
    assert events[1].payload["data"] == complete


# --------------------------------------------------------------------------- replay


def test_a_replayed_capture_reaches_process_batch_byte_for_byte(
    app, worker_log, redis_client, tmp_path
):
    connection = new_connection()
    account = connection.split(":")[0]
    frames = [ltp_frame(1 + i % 7, first_token=i * 10) for i in range(40)] + [b"\x00"]
    writer = CaptureWriter(tmp_path, account, connection)
    start = time.time()
    for i, frame in enumerate(frames):
        writer.write(start + i * 0.01, frame)
    writer.close()
    assert writer.path is not None

    waits: list[float] = []
    result = replay(writer.path, app, speed=0.5, max_frames=7, max_delay_s=0.05, sleep=waits.append)

    assert result.frames == len(frames)
    replayed = result.connection
    assert replayed == f"{connection}/replay"
    wait_for(lambda: hget_int(redis_client, FRAMES_KEY, replayed) == len(frames), worker_log)
    assert hget_int(redis_client, PACKETS_KEY, replayed) == sum(1 + i % 7 for i in range(40))
    assert hget_int(redis_client, CHECKSUM_KEY, replayed) == frames_checksum(frames)
    assert result.batches >= len(frames) // 7
    # Sends were spaced by the captured timing divided by the speed (0.4 s captured / 0.5).
    assert waits
    assert max(waits) <= (len(frames) - 1) * 0.01 / 0.5 + 1e-6


# --------------------------------------------------------------------------- delivery


PROXY = r"""
import asyncio, sys

listen_port, target_host, target_port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])

async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()

async def handle(reader, writer):
    try:
        upstream_reader, upstream_writer = await asyncio.open_connection(target_host, target_port)
    except OSError:
        writer.close()
        return
    await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""


class Proxy:
    """A TCP proxy process in front of Redis: ``cut`` kills it, ``restore`` starts it again."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._process: subprocess.Popen[bytes] | None = None

    def restore(self) -> None:
        argv = [sys.executable, "-c", PROXY, str(self.port), self.target[0], str(self.target[1])]
        self._process = subprocess.Popen(argv)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def cut(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None


def _queued_seqs(client: redis.Redis, connection: str) -> list[int]:
    """Sequence numbers of the ticks-queue messages of ``connection``, oldest first."""
    seqs = []
    for raw in reversed(client.lrange("ticks", 0, -1)):  # LPUSH: newest at the left
        envelope = json.loads(raw)
        body = base64.b64decode(envelope["body"])
        _args, kwargs, _embed = msgpack.unpackb(body, raw=False)
        if kwargs.get("connection") == connection:
            seqs.append(kwargs["seq"])
    return seqs


def test_delivery_through_a_broker_outage_keeps_order_and_counts_once(
    redis_service, database_url, tmp_path
):
    if not redis_service.url.startswith("redis://"):
        pytest.skip("the outage proxy needs Redis over TCP")
    # A Redis database of its own: no other worker consumes its queues while we look.
    scratch = redis_for_tests()
    proxy = None
    try:
        parsed = urlparse(scratch.url)
        proxy = Proxy(parsed.hostname or "127.0.0.1", parsed.port or 6379)
        app = producer_app(f"redis://127.0.0.1:{proxy.port}{parsed.path}")
        connection = new_connection()
        batches = [make_batch(connection, seq, [ltp_frame(1 + seq % 5)]) for seq in range(60)]
        stats = asyncio.run(_outage_scenario(app, proxy, batches, tmp_path / "journal"))

        assert stats.outages >= 2
        assert stats.batches_journaled > 0
        assert stats.frames_dropped == 0
        client = redis.Redis.from_url(scratch.url, socket_timeout=5)
        queued = _queued_seqs(client, connection)
        # A publish cut mid-way may have arrived and was sent again: at least once, in order.
        in_order = [seq for i, seq in enumerate(queued) if i == 0 or queued[i - 1] != seq]
        assert in_order == list(range(60))

        env = {"TICKER_REDIS_URL": scratch.url, "TICKER_DATABASE_URL": database_url}
        log = tmp_path / "worker.log"
        with celery_worker(["ticks"], env=env, concurrency=2, log_path=log):
            wait_for(lambda: client.llen("ticks") == 0, log)
            expected = sum(1 + seq % 5 for seq in range(60))
            wait_for(lambda: hget_int(client, FRAMES_KEY, connection) == 60, log)
        assert hget_int(client, PACKETS_KEY, connection) == expected
        client.close()
    finally:
        if proxy is not None:
            proxy.cut()
        scratch.close()


async def _outage_scenario(app, proxy: Proxy, batches: list[TickBatch], journal_dir: Path):
    sink = Delivery(
        KombuSender(app, timeout_s=0.5),
        buffer=BoundedBuffer(5 * batch_size(batches[0])),
        journal=Journal(journal_dir, max_bytes=1 << 20, segment_bytes=2048),
        reconnect_max_s=0.5,
        probe_timeout_s=0.5,
    )
    runner = asyncio.create_task(sink.run())
    try:
        # The broker is down from the start (nothing listens on the port).
        for batch in batches[:10]:
            sink.submit(batch)
        await _until(lambda: not sink.stats.broker_up)
        proxy.restore()
        for batch in batches[10:20]:
            sink.submit(batch)
        assert await sink.drain(timeout_s=WAIT_S)
        # It goes away while connected, and comes back.
        proxy.cut()
        for batch in batches[20:50]:
            sink.submit(batch)
            await asyncio.sleep(0)
        await _until(lambda: not sink.stats.broker_up)
        assert sink.stats.journal_batches > 0
        proxy.restore()
        for batch in batches[50:]:
            sink.submit(batch)
        assert await sink.drain(timeout_s=WAIT_S)
    finally:
        sink.stop()
        await asyncio.wait_for(runner, timeout=10)
        sink.close()
    return sink.stats


async def _until(predicate, timeout_s: float = WAIT_S) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")
