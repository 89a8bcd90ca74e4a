"""The tick pipeline against the real Redis: order-independent state, deduplicated stream.

Tokens and connections are unique per test, so the shared state hash and stream of the run
can be filtered down to what a test wrote.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from typing import Any

import numpy as np
import pytest
import redis

from schemas.ticks import to_kite_ticks
from ticker_tasks.kite import codec
from ticker_tasks.kite.codec import TICK_DTYPE, decode_many, encode
from ticker_tasks.pipeline.publish import CHANNEL, PUBLISHED_KEY, STREAM_KEY, Publisher
from ticker_tasks.pipeline.state import STATE_ORDER_KEY, STATE_ROWS_KEY, read_snapshot, unpack_rows
from ticker_tasks.pipeline.validate import BatchRef

pytestmark = pytest.mark.integration

WAIT_S = 30.0
Batch = tuple[BatchRef, np.ndarray, np.ndarray]


def make_rows(tokens: list[int], rng: random.Random, base_ts: int) -> np.ndarray:
    """Decoded rows: full packets for even positions, LTP packets for odd ones."""
    rows = np.zeros(len(tokens), dtype=TICK_DTYPE)
    rows["instrument_token"] = tokens
    full = np.arange(len(tokens)) % 2 == 0
    rows["packet_length"] = np.where(full, 184, 8)
    rows["last_price"] = [rng.randint(9000, 11000) / 100 for _ in tokens]
    rows["high"] = np.where(full, 120.0, 0.0)
    rows["low"] = np.where(full, 80.0, 0.0)
    rows["close"] = np.where(full, 100.0, 0.0)
    # Few distinct timestamps and volumes: ties fall through to the later key parts.
    rows["exchange_timestamp"] = np.where(full, [base_ts + rng.randint(0, 2) for _ in tokens], 0)
    rows["volume_traded"] = np.where(full, [rng.randint(0, 2) * 100 for _ in tokens], 0)
    decoded, _ = decode_many([encode(rows)])
    return decoded


def make_batches(count: int, tokens: list[int], seed: int) -> list[Batch]:
    rng = random.Random(seed)
    connections = [f"P{uuid.uuid4().hex[:8]}:{k}" for k in range(2)]
    base_ts = int(time.time())
    batches: list[Batch] = []
    for seq in range(count):
        picked = rng.sample(tokens, k=len(tokens) // 2) + rng.sample(tokens, k=2)
        rows = make_rows(picked, rng, base_ts)
        received = np.array([base_ts + rng.choice([0.0, 0.5, 1.0]) for _ in picked])
        ref = BatchRef(uuid.uuid4().hex, connections[seq % 2], seq // 2, "mock")
        batches.append((ref, rows, received))
    return batches


def state_of(client: redis.Redis, tokens: list[int]) -> dict[int, tuple[bytes, bytes]]:
    keys = client.hmget(STATE_ORDER_KEY, tokens)
    rows = client.hmget(STATE_ROWS_KEY, tokens)
    return {t: (k, r) for t, k, r in zip(tokens, keys, rows, strict=True) if k is not None}


def forget(client: redis.Redis, tokens: list[int], batches: list[Batch]) -> None:
    """Remove what a scenario wrote, so the next scenario starts from nothing."""
    client.hdel(STATE_ORDER_KEY, *tokens)
    client.hdel(STATE_ROWS_KEY, *tokens)
    for connection in {ref.connection for ref, _, _ in batches}:
        client.delete(PUBLISHED_KEY.format(connection=connection))


def stream_after(client: redis.Redis, last_id: str, batches: list[Batch]) -> list[str]:
    ids = {ref.batch_id for ref, _, _ in batches}
    entries = client.xrange(STREAM_KEY, f"({last_id}", "+")
    messages = [entry[b"m"].decode() for _, entry in entries]
    return [m for m in messages if json.loads(m)["batch_id"] in ids]


def last_stream_id(client: redis.Redis) -> str:
    last = client.xrevrange(STREAM_KEY, "+", "-", count=1)
    return last[0][0].decode() if last else "0-0"


def publisher(client: redis.Redis) -> Publisher:
    return Publisher(client, stream_maxlen=100_000, dedup_window=1000)


def run_threads(url: str, parts: list[list[Batch]]) -> None:
    errors: list[BaseException] = []

    def work(part: list[Batch]) -> None:
        client = redis.Redis.from_url(url, socket_timeout=5)
        try:
            pub = publisher(client)
            for ref, rows, received in part:
                pub.publish(ref, rows, received)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=work, args=(part,)) for part in parts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=WAIT_S)
        assert not thread.is_alive()
    assert not errors, errors


def test_redelivery_and_reordering_give_the_same_state_and_stream(
    redis_client: redis.Redis, redis_service: Any
) -> None:
    tokens = [(random.randrange(1, 2**23) << 8) | 1 for _ in range(30)]
    batches = make_batches(12, tokens, seed=7)

    start = last_stream_id(redis_client)
    pub = publisher(redis_client)
    outcomes = [pub.publish(*b) for b in batches]
    outcomes += [pub.publish(*b) for b in batches]  # every batch delivered twice
    assert [o.new for o in outcomes] == [True] * 12 + [False] * 12
    assert all(o.applied == 0 for o in outcomes[12:])
    state_a = state_of(redis_client, tokens)
    stream_a = stream_after(redis_client, start, batches)
    assert len(stream_a) == 12
    assert set(state_a) == set(tokens)

    forget(redis_client, tokens, batches)
    start = last_stream_id(redis_client)
    shuffled = batches + batches[::3]  # some twice
    random.Random(1).shuffle(shuffled)
    run_threads(redis_service.url, [shuffled[0::2], shuffled[1::2]])
    state_b = state_of(redis_client, tokens)
    stream_b = stream_after(redis_client, start, batches)

    assert state_b == state_a
    assert sorted(stream_b) == sorted(stream_a)
    assert len(stream_b) == 12


def test_state_holds_the_newest_row_by_the_order_key(redis_client: redis.Redis) -> None:
    token = (random.randrange(1, 2**23) << 8) | 1
    connection = f"P{uuid.uuid4().hex[:8]}:0"
    base = int(time.time())
    rows = make_rows([token, token + 256, token], random.Random(3), base)[[0, 2]]  # full
    rows["exchange_timestamp"] = [base + 5, base + 1]
    rows["volume_traded"] = [10, 500]
    rows["last_price"] = [101.0, 99.0]
    newer, older = rows[:1], rows[1:]
    pub = publisher(redis_client)
    # The newer tick arrives first, in a batch with a lower seq and an older receive time.
    pub.publish(BatchRef(uuid.uuid4().hex, connection, 1, "mock"), newer, np.array([base]))
    pub.publish(BatchRef(uuid.uuid4().hex, connection, 2, "mock"), older, np.array([base + 9]))
    held = unpack_rows([redis_client.hget(STATE_ROWS_KEY, token)])
    assert held["last_price"].tolist() == [101.0]
    assert held["exchange_timestamp"].tolist() == [base + 5]


def test_a_late_joiner_reads_the_snapshot_then_the_stream_without_gap_or_duplicate(
    redis_client: redis.Redis,
) -> None:
    tokens = [(random.randrange(1, 2**23) << 8) | 1 for _ in range(10)]
    batches = make_batches(6, tokens, seed=11)
    pub = publisher(redis_client)
    for batch in batches[:3]:
        pub.publish(*batch)
    snapshot = read_snapshot(redis_client, STREAM_KEY)
    mine = np.isin(snapshot.rows["instrument_token"], tokens)
    assert mine.sum() == len({int(t) for _, r, _ in batches[:3] for t in r["instrument_token"]})
    for batch in batches[3:]:
        pub.publish(*batch)
    after = stream_after(redis_client, snapshot.stream_id, batches)
    assert [json.loads(m)["batch_id"] for m in after] == [ref.batch_id for ref, _, _ in batches[3:]]


def test_a_subscriber_receives_kiteconnect_ticks(redis_client: redis.Redis) -> None:
    tokens = [(random.randrange(1, 2**23) << 8) | 1 for _ in range(6)]
    ref, rows, received = make_batches(1, tokens, seed=5)[0]
    pubsub = redis_client.pubsub()
    try:
        pubsub.subscribe(CHANNEL.format(mode="full"), CHANNEL.format(mode="ltp"))
        deadline = time.monotonic() + WAIT_S
        confirmed = 0
        while confirmed < 2 and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1.0)
            confirmed += bool(message and message["type"] == "subscribe")
        assert confirmed == 2
        assert publisher(redis_client).publish(ref, rows, received).new
        received_ticks: dict[str, list[dict[str, Any]]] = {}
        while len(received_ticks) < 2 and time.monotonic() < deadline:
            message = pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None:
                continue
            payload = json.loads(message["data"])
            if payload["batch_id"] == ref.batch_id:
                received_ticks[message["channel"].decode()] = to_kite_ticks(payload)
    finally:
        pubsub.close()
    for mode, length in (("full", 184), ("ltp", 8)):
        expected = codec.to_kite_ticks(rows[rows["packet_length"] == length])
        assert received_ticks[CHANNEL.format(mode=mode)] == expected


# --------------------------------------------------------------------------- real worker


def publish_registry_with(client: redis.Redis, tokens: list[int]) -> None:
    """Add instruments holding ``tokens`` to the published registry."""
    from tests.support.instruments import instrument_row, publish_registry_with_rows

    publish_registry_with_rows(
        client,
        [
            instrument_row(10**9 + (token >> 8), token, f"PIPE{token}", "EQ", exchange="NSE")
            for token in tokens
        ],
    )


def wait_for(predicate: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_process_batch_on_a_worker_validates_merges_and_publishes_once(
    redis_client: redis.Redis, redis_service: Any, tmp_path: Any
) -> None:
    from schemas.ticks import TickBatch
    from tests.support.workers import celery_worker, producer_app
    from ticker_tasks.metrics import Metrics
    from ticker_tasks.pipeline.validate import DEAD_LETTER_STREAM
    from ticker_tasks.tasks.ticks import PROCESS_BATCH

    tokens = [(random.randrange(1, 2**23) << 8) | 1 for _ in range(5)]
    publish_registry_with(redis_client, tokens[:4])
    rows = make_rows(tokens, random.Random(9), int(time.time()))
    rows["bid_price"][0, 0], rows["ask_price"][0, 0] = 101.0, 100.0  # crossed (full row)
    connection = f"P{uuid.uuid4().hex[:8]}:0"
    batch = TickBatch(
        batch_id=uuid.uuid4().hex,
        source="mock",
        account_id="P",
        connection=connection,
        seq=1,
        received_at=[time.time()],
        frames=[encode(rows)],
    )
    metrics = Metrics(redis_client)
    before = {r: metrics.counter("ticks_rejected", reason=r) for r in ("unknown_token",)}
    before["crossed_depth"] = metrics.counter("ticks_rejected", reason="crossed_depth")
    app = producer_app()
    env = {"TICKER_REDIS_URL": redis_service.url, "TICKER_REGISTRY_CHECK_INTERVAL_S": "0.1"}
    log = tmp_path / "worker.log"
    with celery_worker(["ticks"], env=env, concurrency=1, log_path=log):
        for _ in range(2):
            app.send_task(
                PROCESS_BATCH, kwargs=batch.to_message(), serializer="msgpack", queue="ticks"
            )
        try:
            wait_for(lambda: metrics.counter("tick_batches_duplicate", connection=connection) == 1)
        except AssertionError:
            raise AssertionError(log.read_text()) from None

    assert metrics.counter("ticks_rejected", reason="unknown_token") == before["unknown_token"] + 1
    assert metrics.counter("ticks_rejected", reason="crossed_depth") == before["crossed_depth"] + 1
    letters = [
        fields
        for _, fields in redis_client.xrange(DEAD_LETTER_STREAM, "-", "+")
        if fields[b"connection"] == connection.encode()
    ]
    assert sorted(f[b"reason"] for f in letters) == [b"crossed_depth", b"unknown_token"]
    published = [
        json.loads(fields[b"m"])
        for _, fields in redis_client.xrange(STREAM_KEY, "-", "+")
        if json.loads(fields[b"m"])["batch_id"] == batch.batch_id
    ]
    assert len(published) == 1
    good = rows[1:4]
    assert to_kite_ticks(published[0]) == codec.to_kite_ticks(good)
    assert published[0]["packet_index"] == [1, 2, 3]  # rows 0 and 4 were rejected
    assert sorted(state_of(redis_client, tokens)) == sorted(tokens[1:4])


def test_a_one_mode_batch_publishes_the_stream_message_on_its_channel(
    redis_client: redis.Redis,
) -> None:
    tokens = [(random.randrange(1, 2**23) << 8) | 1 for _ in range(6)]
    rows = make_rows(tokens, random.Random(2), int(time.time()))[0::2]  # full rows only
    ref = BatchRef(uuid.uuid4().hex, f"P{uuid.uuid4().hex[:8]}:0", 1, "mock")
    pubsub = redis_client.pubsub()
    try:
        pubsub.subscribe(CHANNEL.format(mode="full"))
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1.0)
            if message and message["type"] == "subscribe":
                break
        assert publisher(redis_client).publish(ref, rows, np.zeros(rows.size)).new
        payload = None
        while payload is None and time.monotonic() < deadline:
            message = pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None and json.loads(message["data"])["batch_id"] == ref.batch_id:
                payload = message["data"].decode()
    finally:
        pubsub.close()
    assert payload is not None
    assert [payload] == stream_after(redis_client, "0-0", [(ref, rows, np.zeros(0))])
    assert to_kite_ticks(json.loads(payload)) == codec.to_kite_ticks(rows)
