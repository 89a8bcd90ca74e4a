"""Completeness of stream bars: verify the latest session against Kite, fix what differs.

One run (:func:`check_completeness`, called by the beat task
``ticker_tasks.candles.check_completeness`` on the ``backfill`` queue):

1. **Session**: the most recent NSE session that has closed (:class:`TradingCalendar`).
2. **Due instruments**: active instruments with ``source = 'stream'`` minute bars in the
   session, never checked for it or written since their last check, in rotation order
   (:mod:`ticker_tasks.bars.rotation`, Redis key ``ticker_tasks:completeness:{day}``).
3. **Budget**: at most ``floor(completeness_budget_share x kite_rate_historical_per_s x
   period_s)`` historical requests, ``period_s`` being the beat slot length (the shortest gap
   between two fire times of ``schedule_candles_completeness``, 300 s by default); every
   request still takes a slot of the shared Redis rate limiter of the account's api_key
   (through :class:`~ticker_tasks.kite.rest.KiteRestClient`), so backfill and this check
   together never exceed Kite's limit. No instrument is started after ``candles_job_max_s``.
4. **Per instrument**: one request for the session's minute candles, then in one transaction
   (the stored bars of the session locked): compare (:mod:`ticker_tasks.bars.compare`),
   mark agreeing stream bars ``complete``, upsert Kite's candle for every disagreeing or
   missing minute with ``source = quality = 'backfilled'``, and record the session as fetched
   for backfill's gap detection (``fetched_ranges``, key ``minute``): every candle Kite sent
   for it is stored now. The gauge ``bars_completeness_pct{instrument_token}`` gets the
   agreeing share of Kite's minutes (not set when Kite sent no candle).

A rate limit or open circuit, or Kite or Redis unavailable, ends the run early (``stopped``):
the instrument stays due and the next slot continues; the task is not retried (a retry would
spend the slot's budget twice). Kite refusing one instrument (``BrokerRejected``) marks it
checked with status ``rejected``. No usable account skips the run.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ticker_tasks import accounts
from ticker_tasks.backfill import store
from ticker_tasks.backfill.plan import Span
from ticker_tasks.backfill.planning import KITE_TO_MARGIN
from ticker_tasks.bars.compare import MINUTE, STREAM, StoredBar, Tolerance, compare_session
from ticker_tasks.bars.rotation import Candidate, CheckRotation, stream_candidates
from ticker_tasks.crypto import CredentialCipher
from ticker_tasks.db.models import Candle
from ticker_tasks.errors import AuthError, BrokerRejected, RetryableError
from ticker_tasks.market.calendar import IST, TradingCalendar
from ticker_tasks.market.calendar import Session as TradingSession
from ticker_tasks.metrics import Metrics
from ticker_tasks.runtime import Runtime
from ticker_tasks.settings import Settings

log = logging.getLogger(__name__)

COMPLETE = "complete"
BACKFILLED = "backfilled"
GAUGE = "bars_completeness_pct"

HistoricalFetcher = Callable[[int, dt.datetime, dt.datetime], list[dict[str, Any]]]
"""Kite minute candles of ``(instrument_token, from, to inclusive)``: one historical request."""


def request_budget(settings: Settings, period_s: float) -> int:
    """Historical requests one run may make: ``floor(share x rate x period_s)``."""
    rate = settings.kite_rate_historical_per_s
    return math.floor(settings.completeness_budget_share * rate * period_s + 1e-9)


def latest_session(calendar: TradingCalendar, now: dt.datetime) -> TradingSession:
    """The most recent session whose close is at or before ``now``."""
    close = calendar.previous_close(now)
    found = calendar.session(close.date())
    assert found is not None, close  # previous_close returns the close of a session
    return found


def _utc(at: dt.datetime) -> dt.datetime:
    return at.replace(tzinfo=dt.UTC) if at.tzinfo is None else at.astimezone(dt.UTC)


@dataclass
class InstrumentCheck:
    """The outcome for one instrument (counts are minutes)."""

    instrument_id: int
    instrument_token: int
    status: str = "checked"
    rest_minutes: int = 0
    agreed: int = 0
    replaced: int = 0
    inserted: int = 0
    extra: int = 0
    completeness_pct: float | None = None
    detail: str = ""


@dataclass
class CompletenessSummary:
    """What one run did; ``skipped`` says why nothing was done, ``stopped`` why it ended early."""

    session: str | None
    budget: int
    requests: int = 0
    instruments_due: int = 0
    instruments_checked: int = 0
    minutes_agreed: int = 0
    minutes_replaced: int = 0
    minutes_inserted: int = 0
    skipped: str | None = None
    stopped: str | None = None
    instruments: list[InstrumentCheck] = field(default_factory=list)

    def add(self, check: InstrumentCheck) -> None:
        """Count one instrument's outcome."""
        self.instruments.append(check)
        self.instruments_checked += 1
        self.minutes_agreed += check.agreed
        self.minutes_replaced += check.replaced
        self.minutes_inserted += check.inserted

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON for the task result."""
        return asdict(self)


def kite_minute_fetcher(runtime: Runtime, account_id: str | None = None) -> HistoricalFetcher:
    """A :data:`HistoricalFetcher` on ``account_id`` (default: the first usable account).

    Raises:
        AuthError: No enabled account with a token (when built, before any request).
    """
    with runtime.sessions() as db:
        chosen = account_id or accounts.default_account_id(db)
        account = accounts.kite_account(
            db, CredentialCipher.from_settings(runtime.settings), chosen
        )
    client = runtime.kite_clients.get(account)

    def fetch(token: int, start: dt.datetime, end: dt.datetime) -> list[dict[str, Any]]:
        return client.historical_data(token, start, end, MINUTE)

    return fetch


def _stored_bars(db: Session, instrument_id: int, span: Span) -> dict[dt.datetime, StoredBar]:
    """The session's stored minute candles of one instrument, locked until commit."""
    rows = db.execute(
        select(Candle.ts, Candle.high, Candle.low, Candle.volume, Candle.source, Candle.quality)
        .where(
            Candle.instrument_id == instrument_id,
            Candle.interval == MINUTE,
            Candle.ts >= _utc(span.start),
            Candle.ts < _utc(span.end),
        )
        .with_for_update()
    )
    bars = (StoredBar(_utc(ts), float(h), float(lo), int(v), s, q) for ts, h, lo, v, s, q in rows)
    return {bar.ts: bar for bar in bars}


def check_instrument(
    runtime: Runtime, fetcher: HistoricalFetcher, target: Candidate, span: Span
) -> tuple[InstrumentCheck, float]:
    """Verify one instrument's session (see the module notes); returns the check time too.

    Raises:
        RetryableError: From the request (rate limit, open circuit, Kite unavailable).
        BrokerRejected: Kite refused the request.
    """
    rows = fetcher(target.instrument_token, span.start, span.end - KITE_TO_MARGIN)
    rest = store.candles_from_kite(rows, span)
    settings = runtime.settings
    tolerance = Tolerance(
        volume=settings.completeness_volume_tolerance, price=settings.completeness_price_tolerance
    )
    stamp = dt.datetime.now(dt.UTC)
    with runtime.sessions.begin() as db:
        result = compare_session(_stored_bars(db, target.instrument_id, span), rest, tolerance)
        if result.to_mark:
            db.execute(
                update(Candle)
                .where(
                    Candle.instrument_id == target.instrument_id,
                    Candle.interval == MINUTE,
                    Candle.source == STREAM,
                    Candle.ts.in_(result.to_mark),
                )
                .values(quality=COMPLETE, updated_at=stamp)
            )
        store.upsert_candles(
            db, target.instrument_id, MINUTE, result.writes, source=BACKFILLED, quality=BACKFILLED
        )
        store.record_fetched(db, target.instrument_id, MINUTE, span, job_id=None)
    check = InstrumentCheck(
        instrument_id=target.instrument_id,
        instrument_token=target.instrument_token,
        rest_minutes=result.rest_minutes,
        agreed=len(result.confirmed),
        replaced=len(result.replace),
        inserted=len(result.insert),
        extra=len(result.extra),
        completeness_pct=result.completeness_pct,
    )
    return check, stamp.timestamp()


def check_completeness(
    runtime: Runtime,
    *,
    period_s: float,
    now: dt.datetime | None = None,
    calendar: TradingCalendar | None = None,
    fetcher: HistoricalFetcher | None = None,
) -> CompletenessSummary:
    """Check the due instruments of the latest closed session within the request budget.

    Args:
        runtime: Settings, database, Redis and Kite clients of this process.
        period_s: Length of the run's beat slot (sets the request budget).
        now: The present (default: the clock).
        calendar: NSE calendar covering ``now`` (default: built for this year and the last).
        fetcher: Kite minute candles (default: the first usable account's rate-limited client).
    """
    at = (now or dt.datetime.now(dt.UTC)).astimezone(IST)
    calendar = calendar or TradingCalendar(at.year - 1, at.year)
    session = latest_session(calendar, at)
    span = Span(session.open, session.close)
    summary = CompletenessSummary(
        session=session.day.isoformat(), budget=request_budget(runtime.settings, period_s)
    )
    rotation = CheckRotation(runtime.redis, session.day)
    with runtime.sessions() as db:
        due = rotation.due(stream_candidates(db, session))
    summary.instruments_due = len(due)
    if not due:
        summary.skipped = "no instrument due"
        return summary
    if summary.budget < 1:
        summary.skipped = "request budget below one request"
        return summary
    try:
        fetch = fetcher or kite_minute_fetcher(runtime)
    except AuthError as exc:
        summary.skipped = f"no usable account: {exc}"
        return summary
    _run(runtime, fetch, due, span, rotation, summary)
    log.info(
        "completeness %s: %d checked, %d requests, %d agreed, %d replaced, %d inserted%s",
        summary.session,
        summary.instruments_checked,
        summary.requests,
        summary.minutes_agreed,
        summary.minutes_replaced,
        summary.minutes_inserted,
        f", stopped: {summary.stopped}" if summary.stopped else "",
    )
    return summary


def _run(
    runtime: Runtime,
    fetch: HistoricalFetcher,
    due: Sequence[Candidate],
    span: Span,
    rotation: CheckRotation,
    summary: CompletenessSummary,
) -> None:
    metrics = Metrics(runtime.redis)
    deadline = time.monotonic() + runtime.settings.candles_job_max_s
    for target in due:
        if summary.requests >= summary.budget:
            summary.stopped = "request budget spent"
            return
        if time.monotonic() >= deadline:
            summary.stopped = "time budget spent"
            return
        summary.requests += 1  # every attempt counts: the budget bounds requests sent
        try:
            check, checked_at = check_instrument(runtime, fetch, target, span)
        except BrokerRejected as exc:
            check = InstrumentCheck(
                target.instrument_id, target.instrument_token, status="rejected", detail=str(exc)
            )
            checked_at = time.time()
        except (RetryableError, AuthError) as exc:
            summary.stopped = f"{type(exc).__name__}: {exc}"
            log.warning("completeness %s stopped: %s", summary.session, summary.stopped)
            return
        rotation.mark(target.instrument_id, checked_at)
        summary.add(check)
        if check.completeness_pct is not None:
            metrics.set_gauge(
                GAUGE, check.completeness_pct, instrument_token=str(target.instrument_token)
            )
