"""Completeness of stream bars against the simulator's minute candles (PostgreSQL, Redis).

Stream bars of the latest closed session are seeded from the simulator's own REST candles
(fetched first through the service's client), some equal, some within the tolerance, some
wrong and some missing; the check must confirm, replace and insert exactly those.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest
from sqlalchemy import select, text, update

from tests.support.services import Service
from tests.support.simulator import SimulatorHandle, running_simulator
from tests.support.stack import sim_runtime
from tests.support.workers import celery_worker, producer_app
from ticker_tasks.backfill import store
from ticker_tasks.backfill.plan import Span
from ticker_tasks.backfill.store import CandleRow
from ticker_tasks.bars.completeness import (
    GAUGE,
    check_completeness,
    kite_minute_fetcher,
    latest_session,
    request_budget,
)
from ticker_tasks.bars.rotation import ROTATION_KEY, Candidate, CheckRotation
from ticker_tasks.db.models import Candle, FetchedRange, Instrument
from ticker_tasks.market.calendar import IST, TradingCalendar
from ticker_tasks.market.calendar import Session as TradingSession
from ticker_tasks.metrics import Metrics
from ticker_tasks.runtime import Runtime

pytestmark = pytest.mark.integration

API_KEY, ACCESS_TOKEN = "cc_key", "cc_token"
TASK = "ticker_tasks.candles.check_completeness"
#: floor(0.2 x 3 req/s x 2 s) = 1 request per run: one instrument per run.
ONE_REQUEST_PERIOD_S = 2.0
EQUAL, WITHIN, WRONG = range(0, 10), range(10, 15), range(15, 20)
#: Stream bars stop here: every later minute of Kite's answer is missing from the stream.
SEEDED = 20


@dataclass
class Stack:
    sim: SimulatorHandle
    runtime: Runtime
    env: dict[str, str]
    calendar: TradingCalendar
    now: dt.datetime
    session: TradingSession
    instruments: list[Instrument]
    rest: dict[int, list[CandleRow]]

    def historical_count(self) -> int:
        routes = self.sim.stats()["requests"].get(API_KEY, {})
        return sum(r["count"] for name, r in routes.items() if "historical" in name.lower())

    @property
    def span(self) -> Span:
        return Span(self.session.open, self.session.close)


def _clear(runtime: Runtime) -> None:
    with runtime.engine.begin() as connection:
        connection.execute(text('TRUNCATE "candles", "fetched_ranges" RESTART IDENTITY CASCADE'))
    for key in runtime.redis.scan_iter("ticker_tasks:completeness:*"):
        runtime.redis.delete(key)
    for key in runtime.redis.scan_iter("ticker_tasks:periodic:candles.*"):
        runtime.redis.delete(key)


@pytest.fixture(scope="module")
def stack(migrated_postgres_url: str, redis_service: Service) -> Iterator[Stack]:
    accounts_spec = [f"{API_KEY}:{ACCESS_TOKEN}"]
    with (
        running_simulator(follow_calendar=True, universe_size=60, accounts=accounts_spec) as sim,
        sim_runtime(
            sim,
            database_url=migrated_postgres_url,
            redis_url=redis_service.url,
            account_id="cc",
            api_key=API_KEY,
            access_token=ACCESS_TOKEN,
        ) as built,
    ):
        runtime = built.runtime
        now = dt.datetime.now(IST)
        calendar = TradingCalendar(now.year - 1, now.year)
        session = latest_session(calendar, now)
        with runtime.sessions() as db:
            instruments = list(
                db.scalars(
                    select(Instrument)
                    .where(Instrument.segment == "NSE", Instrument.instrument_type == "EQ")
                    .order_by(Instrument.instrument_id)
                    .limit(3)
                )
            )
        assert len(instruments) == 3
        # Kite's candles, fetched through the same client and account the check uses.
        fetch = kite_minute_fetcher(runtime)
        span = Span(session.open, session.close)
        rest = {
            i.instrument_id: store.candles_from_kite(
                fetch(i.instrument_token, session.open, session.close - dt.timedelta(seconds=1)),
                span,
            )
            for i in instruments
        }
        assert all(len(candles) > SEEDED + 10 for candles in rest.values())
        try:
            yield Stack(sim, runtime, built.env, calendar, now, session, instruments, rest)
        finally:
            _clear(runtime)


def _seed_bars(stack: Stack, instrument_id: int) -> None:
    """Stream bars: 10 equal (mixed qualities), 5 within tolerance, 5 wrong, the rest missing."""
    rows: list[Candle] = []
    qualities = ["complete", "gap", "mock", "replayed", "gap"]
    for n, candle in enumerate(stack.rest[instrument_id][:SEEDED]):
        volume, high = candle.volume, candle.high
        if n in WITHIN:
            volume = int(candle.volume * 1.005)  # within the 1 % volume tolerance
        elif n in WRONG:
            volume, high = candle.volume + 1000, candle.high * 1.01
        quality = qualities[n % len(qualities)]
        rows.append(
            Candle(
                instrument_id=instrument_id,
                interval="minute",
                ts=candle.ts,
                open=candle.open,
                high=high,
                low=candle.low,
                close=candle.close,
                volume=volume,
                oi=None,
                source="stream",
                quality=quality,
                gap_seconds=17 if quality == "gap" else 0,
            )
        )
    with stack.runtime.sessions.begin() as session:
        session.add_all(rows)


@pytest.fixture
def seeded(stack: Stack) -> Stack:
    _clear(stack.runtime)
    for instrument in stack.instruments:
        _seed_bars(stack, instrument.instrument_id)
    return stack


def _stored(stack: Stack, instrument_id: int) -> dict[dt.datetime, Candle]:
    with stack.runtime.sessions() as session:
        found = session.scalars(
            select(Candle).where(Candle.instrument_id == instrument_id, Candle.interval == "minute")
        ).all()
        session.expunge_all()
    return {c.ts.astimezone(dt.UTC): c for c in found}


def _assert_fixed(stack: Stack, instrument_id: int) -> None:
    rest = stack.rest[instrument_id]
    stored = _stored(stack, instrument_id)
    assert sorted(stored) == [c.ts for c in rest]
    for n, candle in enumerate(rest):
        row = stored[candle.ts]
        if n in EQUAL or n in WITHIN:
            assert (row.source, row.quality) == ("stream", "complete"), n
            # The outage record of a confirmed gap bar is kept.
            assert row.gap_seconds == (17 if n % 5 in (1, 4) else 0), n
        else:
            assert (row.source, row.quality, row.gap_seconds) == ("backfilled", "backfilled", 0)
            got = (row.open, row.high, row.low, row.close, row.volume)
            assert got == (candle.open, candle.high, candle.low, candle.close, candle.volume)


def test_a_run_confirms_replaces_and_inserts_within_its_request_budget(seeded):
    stack = seeded
    first = stack.instruments[0]
    before = stack.historical_count()
    # When one run may make one request
    summary = check_completeness(
        stack.runtime, period_s=ONE_REQUEST_PERIOD_S, calendar=stack.calendar, now=stack.now
    )
    # I expect one instrument checked with one request, the lowest id first
    assert summary.budget == request_budget(stack.runtime.settings, ONE_REQUEST_PERIOD_S) == 1
    assert summary.requests == 1
    assert stack.historical_count() - before == 1
    assert summary.session == stack.session.day.isoformat()
    assert summary.instruments_due == 3
    assert [c.instrument_id for c in summary.instruments] == [first.instrument_id]
    assert summary.stopped == "request budget spent"
    # ... agreeing minutes confirmed, wrong ones replaced, missing ones inserted from Kite
    rest_minutes = len(stack.rest[first.instrument_id])
    agreed = len(EQUAL) + len(WITHIN)
    assert (summary.minutes_agreed, summary.minutes_replaced) == (agreed, len(WRONG))
    assert summary.minutes_inserted == rest_minutes - SEEDED
    _assert_fixed(stack, first.instrument_id)
    # ... the others untouched
    untouched = _stored(stack, stack.instruments[1].instrument_id)
    assert {c.source for c in untouched.values()} == {"stream"} and len(untouched) == SEEDED
    # ... the completeness gauge of the instrument
    pct = Metrics(stack.runtime.redis).gauge(GAUGE, instrument_token=str(first.instrument_token))
    assert pct == pytest.approx(100.0 * agreed / rest_minutes)
    # ... and the session recorded as fetched, so a backfill does not ask for it again
    with stack.runtime.sessions() as session:
        spans = store.fetched_spans(session, [first.instrument_id], ["minute"], stack.span)
    assert spans[first.instrument_id] == [stack.span]


def test_runs_rotate_through_instruments_and_recheck_rewritten_bars(seeded):
    stack = seeded
    ids = [i.instrument_id for i in stack.instruments]

    def run() -> list[int]:
        summary = check_completeness(
            stack.runtime, period_s=ONE_REQUEST_PERIOD_S, calendar=stack.calendar, now=stack.now
        )
        return [c.instrument_id for c in summary.instruments]

    # Each run checks an instrument not checked yet this session
    assert [run(), run(), run()] == [[ids[0]], [ids[1]], [ids[2]]]
    # With everything checked, a run makes no request
    before = stack.historical_count()
    idle = check_completeness(stack.runtime, period_s=300, calendar=stack.calendar, now=stack.now)
    assert (idle.skipped, idle.requests, idle.instruments_due) == ("no instrument due", 0, 0)
    assert stack.historical_count() == before
    # When a replayed batch rewrites a stream bar of the second instrument
    ts = stack.rest[ids[1]][0].ts
    with stack.runtime.sessions.begin() as session:
        session.execute(
            update(Candle)
            .where(Candle.instrument_id == ids[1], Candle.ts == ts)
            .values(quality="replayed", updated_at=dt.datetime.now(dt.UTC))
        )
    # I expect only that instrument due again, and confirmed again
    assert run() == [ids[1]]
    assert _stored(stack, ids[1])[ts].quality == "complete"
    checked = CheckRotation(stack.runtime.redis, stack.session.day).checked()
    assert sorted(checked) == sorted(ids)
    key = ROTATION_KEY.format(day=stack.session.day.isoformat())
    assert 0 < stack.runtime.redis.ttl(key) <= 7 * 86_400


def test_kite_unavailable_stops_the_run_and_leaves_the_instrument_due(seeded):
    stack = seeded
    stack.sim.control(
        "POST",
        "/_sim/faults",
        {"kind": "rest_5xx", "status": 503, "route_class": "historical", "api_key": API_KEY},
    )
    summary = check_completeness(
        stack.runtime, period_s=300, calendar=stack.calendar, now=stack.now
    )
    assert summary.instruments_checked == 0
    assert summary.stopped is not None and summary.stopped.startswith("BrokerUnavailable")
    assert CheckRotation(stack.runtime.redis, stack.session.day).checked() == {}
    # The next run carries on with every instrument
    again = check_completeness(stack.runtime, period_s=300, calendar=stack.calendar, now=stack.now)
    assert again.instruments_checked == 3 and again.stopped is None
    for instrument in stack.instruments:
        _assert_fixed(stack, instrument.instrument_id)


def test_the_beat_task_runs_on_a_backfill_worker(seeded, tmp_path):
    stack = seeded
    before = stack.historical_count()
    with celery_worker(["backfill"], env=stack.env, log_path=tmp_path / "worker.log"):
        result = producer_app().send_task(TASK, queue="backfill")
        summary = result.get(timeout=90)
    # The default schedule (every 5 minutes) allows floor(0.2 x 3 x 300) = 180 requests
    assert summary["budget"] == 180
    assert summary["requests"] == summary["instruments_checked"] == 3
    assert stack.historical_count() - before == 3
    assert summary["minutes_replaced"] == 3 * len(WRONG)
    for instrument in stack.instruments:
        _assert_fixed(stack, instrument.instrument_id)
    with stack.runtime.sessions() as session:
        ranges = session.scalars(select(FetchedRange.instrument_id)).all()
    assert sorted(ranges) == sorted(i.instrument_id for i in stack.instruments)


def test_due_order_puts_never_checked_first_then_the_oldest_check(redis_client):
    rotation = CheckRotation(redis_client, dt.date(2001, 2, 3))
    redis_client.delete(rotation.key)
    rotation.mark(5, 100.0)
    rotation.mark(3, 50.0)
    rotation.mark(9, 200.0)
    candidates = [
        Candidate(9, 90, last_write=250.0),  # rewritten after its check
        Candidate(5, 50, last_write=150.0),  # rewritten after its check
        Candidate(3, 30, last_write=40.0),  # checked after its last write: not due
        Candidate(7, 70, last_write=10.0),  # never checked
        Candidate(1, 10, last_write=10.0),  # never checked
    ]
    assert [c.instrument_id for c in rotation.due(candidates)] == [1, 7, 5, 9]
    assert [c.instrument_id for c in rotation.due([replace(candidates[2])])] == []
    redis_client.delete(rotation.key)
