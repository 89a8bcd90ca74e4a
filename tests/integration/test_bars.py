"""1-minute bars against the real Redis, PostgreSQL and Celery workers.

Tokens, instruments and connections are unique per test, so the shared bar hashes, candles and
streams of the run can be filtered down to what a test wrote.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session, sessionmaker

from schemas.feed import OUTAGES_STREAM, Outage
from schemas.ticks import TickBatch
from tests.support.instruments import instrument_row, publish_registry_with_rows
from ticker_tasks.bars.aggregate import aggregate
from ticker_tasks.bars.close import CUM_KEY, BarCloser
from ticker_tasks.bars.close import STREAM_KEY as BARS_STREAM
from ticker_tasks.bars.live import BAR_KEY, DIRTY_KEY, DIRTY_VERSION_KEY, MINUTES_KEY, BarMerger
from ticker_tasks.db.models import Candle
from ticker_tasks.kite.codec import TICK_DTYPE, decode_many, encode
from ticker_tasks.market.registry import RegistryCache
from ticker_tasks.pipeline.batch import TickPipeline
from ticker_tasks.pipeline.publish import PUBLISHED_KEY, STREAM_KEY
from ticker_tasks.pipeline.state import STATE_ORDER_KEY, STATE_ROWS_KEY, order_key_array
from ticker_tasks.settings import Settings
from ticker_tasks.tasks.ticks import SEEN_KEY, run_batch

pytestmark = pytest.mark.integration

WAIT_S = 90.0
CandleTuple = tuple[int, int, float, float, float, float, int, int | None, str, str, int]


@pytest.fixture
def sessions(db_engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(db_engine, expire_on_commit=False)


def new_instruments(
    client: redis.Redis, sessions: sessionmaker[Session], count: int
) -> dict[int, int]:
    """``count`` instruments in the database and the registry: token -> instrument_id."""
    base = random.randrange(10**5, 10**7)
    rows = [
        instrument_row(base + i, ((base + i) << 8) | 1, f"BAR{base + i}", "EQ", exchange="NSE")
        for i in range(count)
    ]
    with sessions() as session, session.begin():
        session.add_all(rows)
    publish_registry_with_rows(client, rows)
    return {row.instrument_token: row.instrument_id for row in rows}


def closer(client: redis.Redis, sessions: sessionmaker[Session]) -> BarCloser:
    return BarCloser(
        client,
        sessions,
        RegistryCache(client, check_interval_s=0),
        grace_s=0,
        max_bars=100_000,
        ttl_s=7200,
        stream_maxlen=100_000,
    )


def candles_of(sessions: sessionmaker[Session], ids: list[int]) -> list[CandleTuple]:
    with sessions() as session:
        found = session.scalars(
            select(Candle)
            .where(Candle.instrument_id.in_(ids))
            .order_by(Candle.instrument_id, Candle.ts)
        ).all()
    return [
        (
            c.instrument_id,
            int(c.ts.timestamp()),
            c.open,
            c.high,
            c.low,
            c.close,
            c.volume,
            c.oi,
            c.source,
            c.quality,
            c.gap_seconds,
        )
        for c in found
    ]


def bars_of(client: redis.Redis, tokens: list[int], minutes: list[int]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for minute in minutes:
        for token, value in zip(
            tokens, client.hmget(BAR_KEY.format(minute=minute), tokens), strict=True
        ):
            if value is not None:
                out[f"{minute}:{token}"] = value
    return out


def past_minute(minutes_back: int) -> int:
    """A minute start ``minutes_back`` ago, moved earlier while the 4 minutes from it would
    cross an IST midnight or touch the session's first minutes (whose volume rule differs)."""
    import datetime as dt

    from ticker_tasks.market.calendar import IST

    minute = (int(time.time()) // 60 - minutes_back) * 60
    while True:
        start = dt.datetime.fromtimestamp(minute, tz=IST)
        end = dt.datetime.fromtimestamp(minute + 240, tz=IST)
        crosses_midnight = start.date() != end.date()
        near_open = dt.time(8, 55) <= start.time() <= dt.time(9, 16)
        if not (crosses_midnight or near_open):
            return minute
        minute -= 1800


def wait_for(predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


# --------------------------------------------------------------------- generated trading


def trading(tokens: list[int], first_minute: int, seed: int) -> list[TickBatch]:
    """Three minutes of full ticks of ``tokens``, increasing cumulative volume, in 12 batches
    on two connections (every tick in exactly one batch)."""
    rng = random.Random(seed)
    ticks: list[tuple[int, int, float, int, int]] = []
    for token in tokens:
        volume, price = rng.randint(1_000, 5_000), rng.uniform(100, 200)
        for second in sorted(rng.sample(range(180), 24)):
            volume += rng.randint(1, 500)
            price = round(max(price + rng.uniform(-1, 1), 1.0), 2)
            ticks.append((token, first_minute + second, price, volume, rng.randint(1, 99) * 75))
    rng.shuffle(ticks)
    connections = [f"B{uuid.uuid4().hex[:8]}:{k}" for k in range(2)]
    batches = []
    for seq, part in enumerate(np.array_split(np.arange(len(ticks)), 12)):
        rows = np.zeros(part.size, dtype=TICK_DTYPE)
        rows["packet_length"] = 184
        for j, i in enumerate(part.tolist()):
            token, ts, price, volume, oi = ticks[i]
            rows[j]["instrument_token"] = token
            rows[j]["exchange_timestamp"] = ts
            rows[j]["last_price"] = rows[j]["high"] = rows[j]["low"] = price
            rows[j]["close"] = price
            rows[j]["volume_traded"] = volume
            rows[j]["oi"] = oi
        frames = [encode(rows[k : k + 5]) for k in range(0, rows.size, 5)]
        batches.append(
            TickBatch(
                batch_id=uuid.uuid4().hex,
                source="mock",
                account_id="B",
                connection=connections[seq % 2],
                seq=seq // 2 + 1,
                received_at=[first_minute + 185.0] * len(frames),
                frames=frames,
            )
        )
    return batches


def expected_volumes(batches: list[TickBatch]) -> dict[tuple[int, int], int]:
    """Per (token, minute): the bar volume the rules give for this generated trading."""
    rows = np.concatenate([decode_many(b.frames)[0] for b in batches])
    vmax: dict[tuple[int, int], int] = {}
    vmin: dict[tuple[int, int], int] = {}
    for token, ts, volume in zip(
        rows["instrument_token"].tolist(),
        rows["exchange_timestamp"].tolist(),
        rows["volume_traded"].tolist(),
        strict=True,
    ):
        key = (token, ts // 60 * 60)
        vmax[key] = max(vmax.get(key, 0), volume)
        vmin[key] = min(vmin.get(key, volume), volume)
    out = {}
    for token, minute in vmax:
        earlier = [m for t, m in vmax if t == token and m < minute]
        if earlier:
            out[(token, minute)] = vmax[(token, minute)] - vmax[(token, max(earlier))]
        else:
            out[(token, minute)] = vmax[(token, minute)] - vmin[(token, minute)]
    return out


def state_of(client: redis.Redis, tokens: list[int]) -> list[tuple[bytes, bytes]]:
    """The latest state (order key, packed row) of ``tokens``."""
    return list(
        zip(
            client.hmget(STATE_ORDER_KEY, tokens), client.hmget(STATE_ROWS_KEY, tokens), strict=True
        )
    )


def stream_of(client: redis.Redis, batches: list[TickBatch], after: str = "0-0") -> list[bytes]:
    """The published stream messages of ``batches`` after the stream id ``after``."""
    ids = {b.batch_id for b in batches}
    return [
        fields[b"m"]
        for _, fields in client.xrange(STREAM_KEY, f"({after}", "+")
        if json.loads(fields[b"m"])["batch_id"] in ids
    ]


def last_stream_id(client: redis.Redis) -> str:
    last = client.xrevrange(STREAM_KEY, "+", "-", count=1)
    return last[0][0].decode() if last else "0-0"


def forget(
    client: redis.Redis, tokens: list[int], minutes: list[int], batches: list[TickBatch]
) -> None:
    """Remove what a scenario wrote to Redis, so the next one starts from nothing."""
    pipe = client.pipeline(transaction=False)
    for minute in minutes:
        pipe.hdel(BAR_KEY.format(minute=minute), *tokens)
        members = [f"{minute}:{t}" for t in tokens]
        pipe.zrem(DIRTY_KEY, *members)
        pipe.hdel(DIRTY_VERSION_KEY, *members)
    pipe.zrem(MINUTES_KEY, *minutes)
    for token in tokens:
        pipe.delete(CUM_KEY.format(token=token))
    pipe.hdel(STATE_ORDER_KEY, *tokens)
    pipe.hdel(STATE_ROWS_KEY, *tokens)
    for connection in {b.connection for b in batches}:
        pipe.delete(
            PUBLISHED_KEY.format(connection=connection), SEEN_KEY.format(connection=connection)
        )
    pipe.execute()


def test_redelivered_and_shuffled_batches_on_two_workers_give_identical_bars_and_candles(
    redis_client: redis.Redis,
    redis_service: Any,
    sessions: sessionmaker[Session],
    migrated_postgres_url: str,
    settings: Settings,
    tmp_path: Path,
) -> None:
    from tests.support.workers import celery_worker, producer_app
    from ticker_tasks.tasks.bars import CLOSE_BARS
    from ticker_tasks.tasks.ticks import PROCESS_BATCH

    ids = new_instruments(redis_client, sessions, 6)
    tokens = sorted(ids)
    first_minute = past_minute(10)
    minutes = [first_minute + 60 * k for k in range(3)]
    batches = trading(tokens, first_minute, seed=11)

    # A: in order, each batch twice, in this process.
    pipeline = TickPipeline(settings, redis_client)
    for batch in batches + batches:
        run_batch(redis_client, pipeline, batch, window=1000)
    bars_a = bars_of(redis_client, tokens, minutes)
    state_a = state_of(redis_client, tokens)
    stream_a = stream_of(redis_client, batches)
    assert len(state_a) == len(tokens) and len(stream_a) == len(batches)
    assert len(bars_a) == len(tokens) * 3
    outcome = closer(redis_client, sessions).run(time.time())
    assert outcome.closed >= len(bars_a)
    candles_a = candles_of(sessions, sorted(ids.values()))
    assert len(candles_a) == len(tokens) * 3
    volumes = expected_volumes(batches)
    by_id = {v: k for k, v in ids.items()}
    assert {(by_id[c[0]], c[1]): c[6] for c in candles_a} == volumes
    assert {c[8] for c in candles_a} == {"stream"} and {c[9] for c in candles_a} == {"mock"}

    forget(redis_client, tokens, minutes, batches)
    with sessions() as session, session.begin():
        session.execute(delete(Candle).where(Candle.instrument_id.in_(list(ids.values()))))

    # B: shuffled, some twice, across the two processes of a real worker, closed by the task.
    shuffled = batches + batches[::3]
    random.Random(5).shuffle(shuffled)
    env = {
        "TICKER_REDIS_URL": redis_service.url,
        "TICKER_DATABASE_URL": migrated_postgres_url,
        "TICKER_REGISTRY_CHECK_INTERVAL_S": "0.1",
    }
    app = producer_app()
    log = tmp_path / "worker.log"
    start = last_stream_id(redis_client)
    with celery_worker(["ticks"], env=env, concurrency=2, log_path=log):
        for batch in shuffled:
            app.send_task(
                PROCESS_BATCH, kwargs=batch.to_message(), serializer="msgpack", queue="ticks"
            )
        same = wait_for(lambda: bars_of(redis_client, tokens, minutes) == bars_a)
        assert same, log.read_text()[-3000:]
        same = wait_for(lambda: sorted(stream_of(redis_client, batches, start)) == sorted(stream_a))
        assert same, log.read_text()[-3000:]
        app.send_task(CLOSE_BARS, queue="ticks")
        closed = wait_for(lambda: candles_of(sessions, sorted(ids.values())) == candles_a)
        assert closed, log.read_text()[-3000:]
    assert state_of(redis_client, tokens) == state_a
    assert len(stream_of(redis_client, batches, start)) == len(batches)  # none appended twice


# ------------------------------------------------------------------------------ feed gaps


def stream_rows(spec: list[tuple[int, int, float, int]]) -> np.ndarray:
    rows = np.zeros(len(spec), dtype=TICK_DTYPE)
    rows["packet_length"] = 184
    for i, (token, ts, price, volume) in enumerate(spec):
        rows[i]["instrument_token"] = token
        rows[i]["exchange_timestamp"] = ts
        rows[i]["last_price"] = price
        rows[i]["volume_traded"] = volume
    decoded, _ = decode_many([encode(rows)])
    return decoded


def merge(client: redis.Redis, rows: np.ndarray, seq: int, source: str = "stream") -> None:
    received, index = rows["exchange_timestamp"] + 0.5, np.arange(rows.size)
    keys = order_key_array(rows, received, index, connection="G:0", seq=seq)
    bars = aggregate(rows, received, index, keys)
    BarMerger(client, ttl_s=7200).merge(bars, source=source)


def add_outage(client: redis.Redis, tokens: list[int], start: float, end: float) -> None:
    outage = Outage(
        account_id="G", connection="G:0", tokens=tokens, start=start, end=end, reason="closed"
    )
    client.xadd(OUTAGES_STREAM, outage.to_fields())


def published_bars(client: redis.Redis, tokens: set[int]) -> list[dict[str, Any]]:
    out = []
    for _, fields in client.xrange(BARS_STREAM, "-", "+"):
        columns = json.loads(fields[b"m"])["columns"]
        for i, token in enumerate(columns["instrument_token"]):
            if token in tokens:
                out.append({name: values[i] for name, values in columns.items()})
    return out


@pytest.fixture
def gap_instruments(redis_client: redis.Redis, sessions: sessionmaker[Session]) -> dict[int, int]:
    return new_instruments(redis_client, sessions, 3)


def test_a_bar_spanning_a_feed_gap_is_flagged_and_a_quiet_instrument_is_not(
    redis_client: redis.Redis, sessions: sessionmaker[Session], gap_instruments: dict[int, int]
) -> None:
    down, later, quiet = sorted(gap_instruments)
    minute = past_minute(5)
    # All three trade early in the minute; only ``down`` and ``later`` trade again at :55.
    merge(
        redis_client,
        stream_rows(
            [
                (down, minute + 2, 100.0, 1_000),
                (later, minute + 3, 50.0, 500),
                (quiet, minute + 4, 20.0, 200),
                (down, minute + 55, 101.0, 1_400),
                (later, minute + 56, 51.0, 600),
            ]
        ),
        seq=1,
    )
    # ``down``'s connection was down from :10 to :40 (``quiet`` simply did not trade).
    add_outage(redis_client, [down], minute + 10.0, minute + 40.0)
    run = closer(redis_client, sessions)
    run.run(time.time())
    ids = gap_instruments
    got = {c[0]: c for c in candles_of(sessions, list(ids.values()))}
    assert (got[ids[down]][9], got[ids[down]][10]) == ("gap", 30)
    assert (got[ids[later]][9], got[ids[later]][10]) == ("complete", 0)
    assert (got[ids[quiet]][9], got[ids[quiet]][10]) == ("complete", 0)
    assert got[ids[down]][2:6] == (100.0, 101.0, 100.0, 101.0)

    # An outage reported after the bar closed flags it on the next run, and it is republished.
    add_outage(redis_client, [later], minute + 20.0, minute + 32.5)
    run.run(time.time())
    got = {c[0]: c for c in candles_of(sessions, list(ids.values()))}
    assert (got[ids[later]][9], got[ids[later]][10]) == ("gap", 12)
    flags = [(b["quality"], b["gap_seconds"]) for b in published_bars(redis_client, {later})]
    assert flags == [("complete", 0), ("gap", 12)]


def test_a_late_tick_amends_its_closed_bar_and_the_next_bars_volume(
    redis_client: redis.Redis, sessions: sessionmaker[Session]
) -> None:
    ids = new_instruments(redis_client, sessions, 1)
    (token,) = ids
    minute = past_minute(5)
    merge(
        redis_client,
        stream_rows(
            [
                (token, minute + 1, 10.0, 100),
                (token, minute + 30, 11.0, 150),
                (token, minute + 70, 12.0, 400),
            ]
        ),
        seq=1,
    )
    run = closer(redis_client, sessions)
    run.run(time.time())
    assert [(c[6], c[3]) for c in candles_of(sessions, [ids[token]])] == [(50, 11.0), (250, 12.0)]
    # A tick of the first minute arrives late: higher price, more volume.
    merge(redis_client, stream_rows([(token, minute + 50, 13.0, 300)]), seq=2)
    outcome = run.run(time.time())
    assert outcome.closed == 2  # the late minute and the one after it
    assert [(c[6], c[3]) for c in candles_of(sessions, [ids[token]])] == [(200, 13.0), (100, 12.0)]
    # The same late tick again changes nothing and closes nothing.
    merge(redis_client, stream_rows([(token, minute + 50, 13.0, 300)]), seq=2)
    assert run.run(time.time()).closed == 0


def test_a_stream_bar_never_overwrites_a_rest_candle(
    redis_client: redis.Redis, sessions: sessionmaker[Session]
) -> None:
    import datetime as dt

    ids = new_instruments(redis_client, sessions, 1)
    (token,) = ids
    minute = past_minute(5)
    with sessions() as session, session.begin():
        session.add(
            Candle(
                instrument_id=ids[token],
                interval="minute",
                ts=dt.datetime.fromtimestamp(minute, tz=dt.UTC),
                open=1.0,
                high=2.0,
                low=0.5,
                close=1.5,
                volume=999,
                oi=None,
                source="backfilled",
                quality="backfilled",
            )
        )
    merge(redis_client, stream_rows([(token, minute + 1, 10.0, 100)]), seq=1)
    closer(redis_client, sessions).run(time.time())
    (stored,) = candles_of(sessions, [ids[token]])
    assert stored[2:10] == (1.0, 2.0, 0.5, 1.5, 999, None, "backfilled", "backfilled")
