"""Historical backfill end to end: simulator, real Redis, PostgreSQL and 4 Celery workers.

The tests of this module share one stack and run in order: a first backfill of months of
minute candles, a re-run, a hole, Kite errors, an expired contract, a redelivered job, the CLI
on the stored data; then the SQLite store and the bench on their own.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from alembic.config import Config
from celery import Celery
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from alembic import command
from tests.support.services import Service
from tests.support.simulator import SimulatorHandle, running_simulator
from tests.support.stack import sim_runtime
from tests.support.workers import celery_worker, producer_app
from ticker_tasks.backfill import RUN_TASK, cli, store
from ticker_tasks.backfill.plan import Span, request_window
from ticker_tasks.backfill.planning import ChunkSpec
from ticker_tasks.db.engine import build_engine
from ticker_tasks.db.models import BackfillJob, Instrument
from ticker_tasks.market.calendar import IST, TradingCalendar
from ticker_tasks.market.jobs import refresh_instruments
from ticker_tasks.runtime import Runtime
from ticker_tasks.settings import load_settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
API_KEY, ACCESS_TOKEN = "bf_key", "bf_token"
#: A second app of the simulator, so reading candles back never touches the backfill's limit.
CHECK_KEY, CHECK_TOKEN = "check_key", "check_token"
INSTRUMENTS = 20
#: Calendar days of minute candles: two requests per instrument under Kite's 60-day cap.
SPAN_DAYS = 70
RESULT_TIMEOUT_S = 150
HISTORICAL = "historical"


@dataclass
class Stack:
    sim: SimulatorHandle
    runtime: Runtime
    producer: Celery
    symbols: list[str]
    first_day: dt.date
    last_day: dt.date
    calendar: TradingCalendar

    def backfill(self, instruments: list[str], first: dt.date, last: dt.date) -> dict[str, Any]:
        summary, _ = self.backfill_watching(instruments, first, last)
        return summary

    def backfill_watching(
        self, instruments: list[str], first: dt.date, last: dt.date
    ) -> tuple[dict[str, Any], str]:
        """Enqueue by name; wait as the CLI does; return the summary and the progress drawn."""
        payload = {
            "instruments": instruments,
            "interval": "minute",
            "from": first.isoformat(),
            "to": last.isoformat(),
        }
        result = self.producer.send_task(RUN_TASK, kwargs=payload, queue="backfill")
        drawn = io.StringIO()
        summary = cli.wait_for_summary(result, timeout=RESULT_TIMEOUT_S, out=drawn, poll_s=0.2)
        assert summary is not None, f"backfill {result.id} did not finish"
        assert result.state == "SUCCESS"
        assert result.get(timeout=10) == summary
        return summary, drawn.getvalue()

    def historical_count(self) -> int:
        requests = self.sim.stats()["requests"].get(API_KEY, {})
        return sum(
            route["count"] for name, route in requests.items() if "historical" in name.lower()
        )

    def instrument(self, symbol: str) -> Instrument:
        exchange, _, tradingsymbol = symbol.partition(":")
        with self.runtime.sessions() as session:
            found = session.scalars(
                select(Instrument)
                .where(Instrument.exchange == exchange, Instrument.tradingsymbol == tradingsymbol)
                .order_by(Instrument.expiry.desc())
            ).first()
        assert found is not None, symbol
        return found


def _trading_day(calendar: TradingCalendar, day: dt.date, step: int) -> dt.date:
    while not calendar.is_trading_day(day) or day.weekday() >= 5:
        day += dt.timedelta(days=step)
    return day


def _migrate(url: str) -> None:
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["skip_logging"] = True
    config.attributes["url"] = url
    engine = _engine(url)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    engine.dispose()


def _engine(url: str) -> Engine:
    return build_engine(load_settings(), url=url)


@pytest.fixture(scope="module")
def stack(
    migrated_postgres_url: str, redis_service: Service, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    _migrate(migrated_postgres_url)
    accounts_spec = [f"{API_KEY}:{ACCESS_TOKEN}", f"{CHECK_KEY}:{CHECK_TOKEN}"]
    with (
        running_simulator(follow_calendar=True, universe_size=200, accounts=accounts_spec) as sim,
        sim_runtime(
            sim,
            database_url=migrated_postgres_url,
            redis_url=redis_service.url,
            account_id="backfiller",
            api_key=API_KEY,
            access_token=ACCESS_TOKEN,
        ) as built,
    ):
        runtime = built.runtime
        with runtime.sessions() as session:
            rows = session.execute(
                select(Instrument.exchange, Instrument.tradingsymbol)
                .where(Instrument.segment == "NSE", Instrument.instrument_type == "EQ")
                .order_by(Instrument.tradingsymbol)
            ).all()
        symbols = [f"{e}:{s}" for e, s in rows][:INSTRUMENTS]
        assert len(symbols) == INSTRUMENTS
        today = dt.datetime.now(IST).date()
        calendar = TradingCalendar(today.year - 1, today.year)
        last_day = _trading_day(calendar, today - dt.timedelta(days=1), -1)
        first_day = _trading_day(calendar, last_day - dt.timedelta(days=SPAN_DAYS - 1), 1)
        env = built.env
        log = tmp_path_factory.mktemp("backfill") / "worker.log"
        try:
            with celery_worker(["backfill"], env=env, concurrency=4, log_path=log):
                yield Stack(sim, runtime, producer_app(), symbols, first_day, last_day, calendar)
        except Exception:
            print(log.read_text() if log.exists() else "(no worker log)")
            raise


def _kite_candles(sim: SimulatorHandle, token: int, window: Span) -> list[tuple[Any, ...]]:
    """The simulator's candles of one instrument, read with bare KiteConnect (another app)."""
    from kiteconnect import KiteConnect

    kite = KiteConnect(CHECK_KEY, access_token=CHECK_TOKEN, root=sim.rest_url)
    rows: list[tuple[Any, ...]] = []
    start = window.start
    while start < window.end:
        end = min(window.end, start + dt.timedelta(days=50))
        sent = time.monotonic()
        answer = kite.historical_data(
            token, start.astimezone(IST), end.astimezone(IST) - dt.timedelta(seconds=1), "minute"
        )
        rows += [
            (c["date"], c["open"], c["high"], c["low"], c["close"], c["volume"]) for c in answer
        ]
        start = end
        time.sleep(max(0.0, sent + 0.4 - time.monotonic()))  # this app's own 3/s
    kite.reqsession.close()
    return rows


def _trading(stack: Stack, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [r for r in rows if stack.calendar.is_trading_day(r[0].astimezone(IST).date())]


def test_months_of_minute_candles_fill_with_the_fewest_requests_within_the_limit(stack):
    # Given 20 instruments with nothing stored, and Kite's 60-day cap for minute candles
    days = (stack.last_day - stack.first_day).days + 1
    expected = INSTRUMENTS * math.ceil(days / 61)  # a request spans day D .. D + 60
    before = stack.historical_count()
    # When the backfill runs on 4 worker processes
    summary, progress = stack.backfill_watching(stack.symbols, stack.first_day, stack.last_day)
    # I expect every instrument complete with exactly the minimal number of requests ...
    assert summary["status"] == "succeeded", summary["ranges_left"]
    assert summary["requests"] == expected
    assert stack.historical_count() - before == expected
    assert [i["status"] for i in summary["instruments"]] == ["complete"] * INSTRUMENTS
    assert summary["ranges_left"] == []
    # ... never a 429, and never more than 3 historical requests in any second for the key
    stats = stack.sim.stats()
    assert stats["rate_limited"].get(API_KEY, {}) == {}
    peaks = stats["max_per_second"][API_KEY]
    assert 1 <= peaks[HISTORICAL]["max_requests_in_1s"] <= 3
    # ... progress was the run task's state while the chunks ran
    assert f"/{expected} requests" in progress
    # ... the job recorded in backfill_jobs
    with stack.runtime.sessions() as session:
        job = session.get(BackfillJob, summary["job_id"])
        assert job.status == "succeeded"
        assert job.summary["requests"] == expected
        assert job.candles_written == summary["candles_written"]


def test_stored_candles_equal_the_simulators(stack):
    window = request_window(stack.first_day, stack.last_day)
    total = 0
    for symbol in stack.symbols:
        instrument = stack.instrument(symbol)
        with stack.runtime.sessions() as session:
            stored = store.read_candles(session, instrument.instrument_id, "minute", window)
        assert {c.ts.utcoffset() for c in stored} == {dt.timedelta(0)}
        ours = [(c.ts, c.open, c.high, c.low, c.close, c.volume) for c in stored]
        theirs = _kite_candles(stack.sim, instrument.instrument_token, window)
        # The simulator trades on every weekday; NSE holidays need (and may get) nothing.
        assert _trading(stack, ours) == _trading(stack, theirs), symbol
        total += len(ours)
    assert total > INSTRUMENTS * 1000


def test_a_rerun_sends_no_request_and_writes_nothing(stack):
    before = stack.historical_count()
    with stack.runtime.sessions() as session:
        candles_before = store.count_candles(
            session, [stack.instrument(s).instrument_id for s in stack.symbols], "minute"
        )
    summary = stack.backfill(stack.symbols, stack.first_day, stack.last_day)
    assert summary["requests"] == 0
    assert summary["candles_written"] == 0
    assert summary["chunks"] == 0
    assert summary["status"] == "succeeded"
    assert stack.historical_count() == before
    with stack.runtime.sessions() as session:
        ids = [stack.instrument(s).instrument_id for s in stack.symbols]
        assert store.count_candles(session, ids, "minute") == candles_before


def test_a_hole_in_the_middle_is_found_and_filled_with_one_request_each(stack):
    # Given the fetched-range record of one middle week forgotten for three instruments
    monday = stack.first_day + dt.timedelta(days=21 + (7 - stack.first_day.weekday()) % 7)
    hole = request_window(monday, monday + dt.timedelta(days=4))
    holed = stack.symbols[3:6]
    with stack.runtime.sessions.begin() as session:
        for symbol in holed:
            assert store.forget_fetched(
                session, stack.instrument(symbol).instrument_id, "minute", hole
            )
    sessions = stack.calendar.sessions(monday, monday + dt.timedelta(days=4))
    refetched = Span(sessions[0].open, sessions[-1].close)
    with stack.runtime.sessions() as session:
        in_hole = sum(
            len(store.read_candles(session, stack.instrument(s).instrument_id, "minute", refetched))
            for s in holed
        )
    before = stack.historical_count()
    # When the whole range is backfilled again
    summary = stack.backfill(stack.symbols, stack.first_day, stack.last_day)
    # I expect one request per holed instrument (Monday open to Friday close), nothing else
    assert summary["requests"] == len(holed)
    assert stack.historical_count() - before == len(holed)
    assert summary["candles_written"] == in_hole > 0
    by_symbol = {i["instrument"]: i for i in summary["instruments"]}
    assert [by_symbol[s]["requests"] for s in holed] == [1, 1, 1]
    # ... and the record is whole again
    again = stack.backfill(holed, stack.first_day, stack.last_day)
    assert again["requests"] == 0


def test_a_503_and_a_429_from_kite_are_retried_until_the_request_succeeds(stack):
    # Given one forgotten day and Kite answering the next historical calls 503, then 429
    symbol = stack.symbols[7]
    day = stack.calendar.sessions(stack.first_day + dt.timedelta(days=10), stack.last_day)[0]
    with stack.runtime.sessions.begin() as session:
        store.forget_fetched(
            session, stack.instrument(symbol).instrument_id, "minute", Span(day.open, day.close)
        )
    for kind, status in (("rest_5xx", 503), ("rest_429", 429)):
        stack.sim.control(
            "POST",
            "/_sim/faults",
            {"kind": kind, "status": status, "route_class": "historical", "api_key": API_KEY},
        )
    before = stack.historical_count()
    # When that day is backfilled
    summary = stack.backfill([symbol], day.day, day.day)
    # I expect the chunk retried (the 503 counted as a retry, the 429 waited out) and done
    assert summary["status"] == "succeeded"
    assert summary["requests"] == 1
    assert summary["retries"] == 1
    assert summary["candles_written"] > 0
    assert stack.historical_count() - before == 3
    assert stack.sim.control("GET", "/_sim/faults")["rest"] == []


def test_an_expired_contract_keeps_its_candles_and_reports_unavailable_expired(stack):
    # Given an active future with a few days of candles stored
    with stack.runtime.sessions() as session:
        future = session.scalars(
            select(Instrument)
            .where(Instrument.segment == "NFO-FUT", Instrument.active)
            .order_by(Instrument.expiry, Instrument.tradingsymbol)
        ).first()
    symbol = f"NFO:{future.tradingsymbol}"
    last = stack.last_day
    first = _trading_day(stack.calendar, last - dt.timedelta(days=6), 1)
    fetched = stack.backfill([symbol], first, last)
    assert fetched["status"] == "succeeded"
    assert fetched["candles_written"] > 0
    with stack.runtime.sessions() as session:
        kept = store.count_candles(session, [future.instrument_id], "minute")
    assert kept == fetched["candles_written"]
    # When the contract expires at Kite and the next master refresh marks it inactive
    stack.sim.control(
        "POST", "/_sim/instruments/expire", {"instrument_token": future.instrument_token}
    )
    assert refresh_instruments(stack.runtime).applied
    assert stack.instrument(symbol).active is False
    # ... and a longer range is asked for by symbol
    earlier = _trading_day(stack.calendar, first - dt.timedelta(days=14), 1)
    summary = stack.backfill([symbol], earlier, last)
    # I expect it found, reported as unavailable_expired (not an error), its candles kept
    assert summary["status"] == "succeeded"
    (outcome,) = summary["instruments"]
    assert outcome["instrument_id"] == future.instrument_id
    assert outcome["active"] is False
    assert outcome["status"] == "unavailable_expired"
    assert summary["ranges_left"]
    assert {r["reason"] for r in summary["ranges_left"]} == {"unavailable_expired"}
    assert summary["candles_written"] == 0
    with stack.runtime.sessions() as session:
        assert store.count_candles(session, [future.instrument_id], "minute") == kept
        found = cli.find_instrument(session, symbol)
    assert found.instrument_id == future.instrument_id


class RecordingSink:
    """Stands in for the result backend: keeps what the service stores."""

    def __init__(self) -> None:
        self.states: list[tuple[str, dict[str, Any]]] = []

    def progress(self, run_task_id: str, meta: dict[str, Any]) -> None:
        self.states.append(("PROGRESS", meta))

    def success(self, run_task_id: str, summary: dict[str, Any]) -> None:
        self.states.append(("SUCCESS", summary))


def test_a_redelivered_run_and_duplicate_chunks_fetch_and_count_once(stack):
    from schemas.backfill import BackfillRequest
    from ticker_tasks.backfill.service import BackfillService

    # Given a job planned and fanned out (two instruments, one request each) ...
    with stack.runtime.sessions() as session:
        extra = [
            f"{e}:{t}"
            for e, t in session.execute(
                select(Instrument.exchange, Instrument.tradingsymbol)
                .where(Instrument.segment == "NSE", Instrument.instrument_type == "EQ")
                .order_by(Instrument.tradingsymbol.desc())
            ).all()
        ][:2]
    assert not set(extra) & set(stack.symbols)
    first = stack.last_day - dt.timedelta(days=6)
    request = BackfillRequest.model_validate(
        {"instruments": extra, "interval": "minute", "from": first, "to": stack.last_day}
    )
    sink = RecordingSink()
    service = BackfillService(stack.runtime, sink)
    sent: list[ChunkSpec] = []
    assert service.start(request, run_task_id="redelivered-job", send=sent.extend) is None
    assert len(sent) == 2
    # ... whose run task crashed before marking it running, and is delivered again
    with stack.runtime.sessions.begin() as session:
        session.get(BackfillJob, "redelivered-job").status = "planning"
    assert service.start(request, run_task_id="redelivered-job", send=sent.extend) is None
    assert [c.to_kwargs() for c in sent[2:]] == [c.to_kwargs() for c in sent[:2]]
    before = stack.historical_count()
    # When every message runs, duplicates included
    outcomes = [service.run_chunk(spec) for spec in sent]
    # I expect one request per chunk, the duplicates skipped, and one final summary
    assert [o is None for o in outcomes] == [False, False, True, True]
    assert stack.historical_count() - before == 2
    assert sink.states[-1][0] == "SUCCESS"
    summary = sink.states[-1][1]
    assert summary["requests"] == 2
    assert summary["candles_written"] == sum(o.candles for o in outcomes if o)
    kinds = [state for state, _ in sink.states]
    assert "PROGRESS" not in kinds[kinds.index("SUCCESS") :]
    # ... and a third delivery of the finished run returns its summary at once
    assert service.start(request, run_task_id="redelivered-job", send=sent.extend) == summary


def test_cli_enqueues_shows_progress_and_reads_candles_back(stack, capsys):
    symbol = stack.symbols[0]
    first, last = stack.first_day, stack.first_day + dt.timedelta(days=6)
    args = argparse.Namespace(
        instruments=[symbol],
        interval="minute",
        from_=first.isoformat(),
        to=last.isoformat(),
        oi=False,
        continuous=False,
        account=None,
        timeout=float(RESULT_TIMEOUT_S),
        no_wait=False,
        json=False,
    )
    assert cli.backfill_command(args, stack.runtime.settings) == 0
    out = capsys.readouterr().out
    assert "succeeded - 0 requests" in out
    # candles back as CSV
    window = request_window(first, last)
    with stack.runtime.sessions() as session:
        count = len(
            store.read_candles(session, stack.instrument(symbol).instrument_id, "minute", window)
        )
    csv_args = argparse.Namespace(
        instrument=symbol,
        interval="minute",
        from_=first.isoformat(),
        to=last.isoformat(),
        continuous=False,
        format="csv",
        limit=None,
    )
    assert cli.candles_command(csv_args, stack.runtime.settings) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "ts,open,high,low,close,volume,oi"
    assert len(lines) == count + 1 > 1
    assert lines[1].startswith(window.start.astimezone(IST).date().isoformat())


def test_progress_line_draws_done_over_total():
    assert cli.progress_line({"done": 10, "total": 40, "candles_written": 1234}).startswith(
        "[" + "#" * 7 + "." * 23 + "]"
    )
    stream = io.StringIO()
    cli.print_summary(
        {
            "job_id": "j",
            "status": "succeeded",
            "requests": 2,
            "candles_written": 10,
            "retries": 0,
            "instruments": [],
            "ranges_left": [],
        },
        stream,
    )
    assert stream.getvalue().startswith("job j: succeeded - 2 requests")


def test_sqlite_store_upserts_idempotently_and_merges_fetched_ranges(tmp_path):
    # Given the embedded default database at head
    url = f"sqlite:///{tmp_path / 'embedded.db'}"
    _migrate(url)
    engine = _engine(url)
    with Session(engine) as session, session.begin():
        session.add(
            Instrument(
                instrument_id=1,
                instrument_token=408065,
                exchange_token=1594,
                exchange="NSE",
                tradingsymbol="INFY",
                segment="NSE",
                instrument_type="EQ",
                tick_size=0.05,
                lot_size=1,
            )
        )
    day = request_window(dt.date(2024, 1, 8), dt.date(2024, 1, 8))
    ts = [dt.datetime(2024, 1, 8, 9, 15 + i, tzinfo=IST) for i in range(3)]
    first = [store.CandleRow(t, 10.0, 11.0, 9.5, 10.5, 100, 7) for t in ts]
    second = [store.CandleRow(t, 10.0, 12.0, 9.5, 11.0, 150, None) for t in ts]
    morning = Span(
        dt.datetime(2024, 1, 8, 9, 15, tzinfo=IST), dt.datetime(2024, 1, 8, 12, tzinfo=IST)
    )
    noon = Span(morning.end, dt.datetime(2024, 1, 8, 15, 30, tzinfo=IST))
    # When the same candles are written twice (a redelivered chunk) and ranges recorded
    with Session(engine) as session, session.begin():
        assert store.upsert_candles(session, 1, "minute", first) == 3
        store.record_fetched(session, 1, "minute", noon, job_id=None)
    with Session(engine) as session, session.begin():
        assert store.upsert_candles(session, 1, "minute", second) == 3
        merged = store.record_fetched(session, 1, "minute", morning, job_id=None)
    # I expect one row per minute with the latest values (a missing oi keeps the stored one)
    with Session(engine) as session:
        rows = store.read_candles(session, 1, "minute", day)
        assert [(r.ts, r.high, r.volume, r.oi) for r in rows] == [
            (t.astimezone(dt.UTC), 12.0, 150, 7) for t in ts
        ]
        # ... and touching ranges merged into one, read back in UTC
        assert merged == Span(morning.start, noon.end)
        assert store.fetched_spans(session, [1], ["minute"], day) == {1: [merged]}
    # When a middle hour is forgotten, the record splits around it
    hole = Span(dt.datetime(2024, 1, 8, 11, tzinfo=IST), dt.datetime(2024, 1, 8, 12, tzinfo=IST))
    with Session(engine) as session, session.begin():
        assert store.forget_fetched(session, 1, "minute", hole) == 1
    with Session(engine) as session:
        assert store.fetched_spans(session, [1], ["minute"], day) == {
            1: [Span(morning.start, hole.start), Span(hole.end, noon.end)]
        }
    engine.dispose()


def test_bench_reports_the_wall_time_against_the_limits_bound():
    from ticker_tasks.backfill.bench import format_bench, run_backfill_bench

    # Given a private stack and 2 instruments x 10 days (one request each under the cap)
    result = run_backfill_bench(instruments=2, days=10, concurrency=2)
    # I expect the figures of a clean run and the bound the limit allows for its requests
    settings = load_settings()
    rate = settings.kite_rate_historical_per_s * settings.kite_rate_headroom
    assert result["status"] == "succeeded"
    assert result["requests"] == 2
    assert result["candles"] > 0
    assert result["http_429"] == 0
    assert 1 <= result["max_requests_in_1s"] <= 3
    assert result["bound_s"] == pytest.approx(2 / rate, abs=1e-3)
    assert result["ratio"] == pytest.approx(result["wall_s"] / result["bound_s"], rel=1e-2)
    assert result["rerun_requests"] == 0
    assert any("ratio" in line for line in format_bench(result))
