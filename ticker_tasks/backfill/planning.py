"""A backfill job's plan: resolve instruments, read what was fetched, list the chunk requests.

The result is plain data the run task stores in ``backfill_jobs.request`` before fanning the
chunks out, so a redelivered run task re-sends the same chunks instead of planning anew.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from schemas.backfill import BackfillRequest
from ticker_tasks.backfill import store
from ticker_tasks.backfill.plan import (
    Span,
    calendar_years,
    plan_requests,
    range_caps,
    request_window,
)
from ticker_tasks.errors import NotFound, ValidationError
from ticker_tasks.market.calendar import TradingCalendar
from ticker_tasks.market.registry import InstrumentInfo, InstrumentTable

#: Kite's ``to`` is inclusive: a chunk ``[start, end)`` asks up to ``end`` minus this.
KITE_TO_MARGIN = dt.timedelta(seconds=1)


@dataclass(frozen=True)
class ChunkSpec:
    """One historical request of a job: the keyword arguments of the chunk task."""

    job_id: str
    instrument_id: int
    token: int
    interval: str
    start: dt.datetime
    end: dt.datetime
    oi: bool
    continuous: bool
    account_id: str

    @property
    def chunk_id(self) -> str:
        """Unique within the job: instrument and start."""
        return f"{self.instrument_id}:{int(self.start.timestamp())}"

    @property
    def span(self) -> Span:
        """The candle start times this request covers."""
        return Span(self.start, self.end)

    def to_kwargs(self) -> dict[str, Any]:
        """JSON keyword arguments of ``ticker_tasks.backfill.chunk``."""
        return {
            "job_id": self.job_id,
            "instrument_id": self.instrument_id,
            "token": self.token,
            "interval": self.interval,
            "from": self.start.isoformat(),
            "to": self.end.isoformat(),
            "oi": self.oi,
            "continuous": self.continuous,
            "account_id": self.account_id,
        }

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> ChunkSpec:
        """Decode :meth:`to_kwargs` output (a :class:`ValidationError` when malformed)."""
        try:
            span = Span(
                dt.datetime.fromisoformat(str(kwargs["from"])),
                dt.datetime.fromisoformat(str(kwargs["to"])),
            )
            spec = cls(
                job_id=str(kwargs["job_id"]),
                instrument_id=int(kwargs["instrument_id"]),
                token=int(kwargs["token"]),
                interval=str(kwargs["interval"]),
                start=span.start,
                end=span.end,
                oi=bool(kwargs["oi"]),
                continuous=bool(kwargs["continuous"]),
                account_id=str(kwargs["account_id"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValidationError(f"malformed backfill chunk arguments: {exc}") from exc
        return spec


@dataclass(frozen=True)
class PlannedInstrument:
    """One requested instrument and what its plan found."""

    ref: str
    info: InstrumentInfo
    requests: tuple[Span, ...]
    #: Missing ranges that cannot be fetched (an expired contract whose token Kite reuses).
    unavailable: tuple[Span, ...] = ()

    def as_json(self) -> dict[str, Any]:
        """What the summary needs, as JSON."""
        return {
            "instrument": self.ref,
            "instrument_id": self.info.instrument_id,
            "instrument_token": self.info.instrument_token,
            "exchange": self.info.exchange,
            "tradingsymbol": self.info.tradingsymbol,
            "active": self.info.active,
            "unavailable": [[s.start.isoformat(), s.end.isoformat()] for s in self.unavailable],
        }


@dataclass(frozen=True)
class JobPlan:
    """Everything a job will do."""

    window: Span
    instruments: tuple[PlannedInstrument, ...]
    chunks: tuple[ChunkSpec, ...]


def resolve(table: InstrumentTable, refs: list[int | str]) -> list[tuple[str, InstrumentInfo]]:
    """Each reference with its instrument, duplicates dropped; NotFound names every unknown."""
    found: list[tuple[str, InstrumentInfo]] = []
    unknown: list[str] = []
    seen: set[int] = set()
    for ref in refs:
        try:
            info = table.resolve(ref)
        except NotFound:
            unknown.append(str(ref))
            continue
        if info.instrument_id not in seen:
            seen.add(info.instrument_id)
            found.append((str(ref), info))
    if unknown:
        raise NotFound(f"unknown instruments: {', '.join(unknown)}")
    return found


def plan_job(
    session: Session,
    table: InstrumentTable,
    request: BackfillRequest,
    *,
    job_id: str,
    account_id: str,
    now: dt.datetime,
    cap_overrides: Mapping[str, int] | None = None,
) -> JobPlan:
    """Plan the chunks of a job from the registry, the fetched ranges and the calendar.

    Raises:
        NotFound: An instrument is unknown to the registry.
        ValidationError: ``continuous`` was asked for an instrument that is not a future.
    """
    resolved = resolve(table, request.instruments)
    if request.continuous:
        bad = [ref for ref, info in resolved if info.instrument_type != "FUT"]
        if bad:
            raise ValidationError(f"continuous data exists for futures only: {', '.join(bad)}")
    requested = request_window(request.from_, request.to)
    window_end = min(requested.end, now)
    if window_end <= requested.start:
        return JobPlan(requested, tuple(PlannedInstrument(r, i, ()) for r, i in resolved), ())
    window = Span(requested.start, window_end)
    calendar = TradingCalendar(*calendar_years(window))
    _, satisfying = store.range_keys(request.interval, oi=request.oi, continuous=request.continuous)
    fetched = store.fetched_spans(
        session, [i.instrument_id for _, i in resolved], satisfying, window
    )
    cap = range_caps(cap_overrides)[request.interval]
    planned: list[PlannedInstrument] = []
    chunks: list[ChunkSpec] = []
    for ref, info in resolved:
        plan = plan_requests(
            calendar, request.interval, window, fetched[info.instrument_id], now=now, cap_days=cap
        )
        holder = None if info.active else table.by_token(info.instrument_token)
        if holder is not None and holder.instrument_id != info.instrument_id:
            # Kite reuses the token of an expired contract: asking for it would return the new
            # holder's candles. Nothing of this contract can be fetched any more.
            planned.append(PlannedInstrument(ref, info, (), plan.requests))
            continue
        planned.append(PlannedInstrument(ref, info, plan.requests))
        chunks.extend(
            ChunkSpec(
                job_id=job_id,
                instrument_id=info.instrument_id,
                token=info.instrument_token,
                interval=request.interval,
                start=span.start,
                end=span.end,
                oi=request.oi,
                continuous=request.continuous,
                account_id=account_id,
            )
            for span in plan.requests
        )
    return JobPlan(window, tuple(planned), tuple(chunks))
