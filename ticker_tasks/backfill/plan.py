"""Backfill planning: which Kite historical requests a range needs. Pure functions only.

The plan of one instrument and interval is::

    requested [start, end)                                  (candle start times)
      -> needed spans: session time holding complete candles (nights, weekends and holidays
         never need data: Kite sends no candle for a minute without trades, so a missing
         candle alone is not a gap; what was fetched is known from the fetched ranges)
      -> minus the ranges fetched already
      -> missing pieces separated only by non-session time merged (one request may span
         nights and weekends)
      -> each merged piece split greedily by Kite's range cap of the interval
      = the fewest requests that fetch every missing candle and nothing fetched before.

Candle semantics: a candle belongs to a range when its start time lies in ``[start, end)``.
Intraday candles start on the interval's grid from the session open (09:15, 09:20, ... for
``5minute``); a ``day`` candle starts at midnight IST of its trading day. Only complete
candles are needed: the forming candle of a running session (and the day candle of a session
not yet closed) waits for a later run.

Kite's range cap counts IST calendar days between the request's ``from`` and (inclusive)
``to`` dates, as the simulator does: a request starting on day D may reach the end of day
D + cap. Greedy splitting is then optimal: every request starts at the earliest needed instant
not yet covered and reaches as far as the cap allows (the classic interval-covering argument).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ticker_tasks.errors import ValidationError
from ticker_tasks.market.calendar import IST, Session, TradingCalendar

#: Kite's historical intervals and their candle length in minutes (``day``: one session).
INTERVAL_MINUTES: Mapping[str, int | None] = {
    "minute": 1,
    "3minute": 3,
    "5minute": 5,
    "10minute": 10,
    "15minute": 15,
    "30minute": 30,
    "60minute": 60,
    "day": None,
}
INTERVALS: tuple[str, ...] = tuple(INTERVAL_MINUTES)

#: Longest range (days) of one historical request per interval (Kite forum discussion/3105,
#: staff answer; the simulator enforces the same figures). ``Settings.backfill_range_cap_days``
#: overrides single entries.
RANGE_CAP_DAYS: Mapping[str, int] = {
    "minute": 60,
    "3minute": 100,
    "5minute": 100,
    "10minute": 100,
    "15minute": 200,
    "30minute": 200,
    "60minute": 400,
    "day": 2000,
}

_DAY = dt.timedelta(days=1)


@dataclass(frozen=True, order=True)
class Span:
    """A half-open time range ``[start, end)`` of timezone-aware datetimes."""

    start: dt.datetime
    end: dt.datetime

    def __post_init__(self) -> None:
        for at in (self.start, self.end):
            if at.tzinfo is None or at.utcoffset() is None:
                raise ValidationError(f"span bound {at.isoformat()} must be timezone-aware")
        if self.start >= self.end:
            raise ValidationError(f"empty span [{self.start}, {self.end})")

    @property
    def duration(self) -> dt.timedelta:
        """Length of the span."""
        return self.end - self.start

    def overlaps(self, other: Span) -> bool:
        """Whether the two spans share an instant."""
        return self.start < other.end and other.start < self.end

    def __str__(self) -> str:
        shown = "%Y-%m-%d %H:%M"
        return f"[{self.start.astimezone(IST):{shown}}, {self.end.astimezone(IST):{shown}})"


def check_interval(interval: str) -> str:
    """Return ``interval`` if Kite knows it, else raise :class:`ValidationError`."""
    if interval not in INTERVAL_MINUTES:
        raise ValidationError(f"unknown interval {interval!r}; one of {', '.join(INTERVALS)}")
    return interval


def range_caps(overrides: Mapping[str, int] | None = None) -> dict[str, int]:
    """:data:`RANGE_CAP_DAYS` with ``overrides`` applied (unknown intervals rejected)."""
    caps = dict(RANGE_CAP_DAYS)
    for interval, days in (overrides or {}).items():
        check_interval(interval)
        if days < 1:
            raise ValidationError(f"range cap of {interval} must be at least one day: {days}")
        caps[interval] = days
    return caps


def request_window(start: dt.date | dt.datetime, end: dt.date | dt.datetime) -> Span:
    """The requested ``[start, end)`` from the payload's ``from`` and ``to``.

    A date means midnight IST; a ``to`` given as a date is inclusive (the whole day). Naive
    datetimes are IST wall-clock time, as Kite's own ``from``/``to`` parameters.
    """
    lower = _as_instant(start)
    upper = _as_instant(end)
    if not isinstance(end, dt.datetime):
        upper += _DAY
    if lower >= upper:
        raise ValidationError(f"'from' ({start}) must be before 'to' ({end})")
    return Span(lower, upper)


def _as_instant(value: dt.date | dt.datetime) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=IST)
    return dt.datetime.combine(value, dt.time(), tzinfo=IST)


def calendar_years(window: Span) -> tuple[int, int]:
    """First and last IST calendar year a :class:`TradingCalendar` needs for ``window``."""
    last = window.end.astimezone(IST) - dt.timedelta(microseconds=1)
    return window.start.astimezone(IST).year, last.year


# --- what needs data ----------------------------------------------------------------------


def needed_spans(
    calendar: TradingCalendar, interval: str, window: Span, *, now: dt.datetime
) -> list[Span]:
    """Session time in ``window`` holding complete candles of ``interval``, ascending.

    Intraday: one span per session, from the first to past the last candle start in the
    window (on the interval's grid from the open), cut before the forming candle at ``now``.
    ``day``: one whole IST day per trading day whose midnight lies in the window and whose
    session closed by ``now``.
    """
    step_minutes = INTERVAL_MINUTES[check_interval(interval)]
    first_day = window.start.astimezone(IST).date()
    last_day = (window.end.astimezone(IST) - dt.timedelta(microseconds=1)).date()
    if first_day > last_day:
        return []
    sessions = calendar.sessions(first_day, last_day)
    if step_minutes is None:
        return [span for s in sessions if (span := _day_span(s, window, now)) is not None]
    step = dt.timedelta(minutes=step_minutes)
    return [span for s in sessions if (span := _intraday_span(s, step, window, now)) is not None]


def _day_span(session: Session, window: Span, now: dt.datetime) -> Span | None:
    midnight = dt.datetime.combine(session.day, dt.time(), tzinfo=IST)
    if not window.start <= midnight < window.end or session.close > now:
        return None
    return Span(midnight, midnight + _DAY)


def _intraday_span(
    session: Session, step: dt.timedelta, window: Span, now: dt.datetime
) -> Span | None:
    lower = max(session.open, window.start)
    upper = min(session.close, window.end, max(session.open, now))
    start = _grid_ceil(session.open, step, lower, session.close)
    end = _grid_ceil(session.open, step, upper, session.close)
    if now < session.close:
        # The candle starting at or before ``now`` is still forming: not needed yet.
        end = min(end, _grid_floor(session.open, step, now))
    return Span(start, end) if start < end else None


def _grid_ceil(
    origin: dt.datetime, step: dt.timedelta, at: dt.datetime, limit: dt.datetime
) -> dt.datetime:
    """The first grid point ``origin + k * step`` at or after ``at``, at most ``limit``."""
    steps = -((origin - at) // step)  # ceil((at - origin) / step)
    return min(origin + max(steps, 0) * step, limit)


def _grid_floor(origin: dt.datetime, step: dt.timedelta, at: dt.datetime) -> dt.datetime:
    return origin + max((at - origin) // step, 0) * step


# --- set operations -------------------------------------------------------------------------


def union(spans: Iterable[Span]) -> list[Span]:
    """Merge overlapping or touching spans; ascending and disjoint."""
    merged: list[Span] = []
    for span in sorted(spans):
        if merged and span.start <= merged[-1].end:
            if span.end > merged[-1].end:
                merged[-1] = Span(merged[-1].start, span.end)
        else:
            merged.append(span)
    return merged


def subtract(span: Span, covered: Sequence[Span]) -> list[Span]:
    """Parts of ``span`` outside ``covered`` (ascending, disjoint, as :func:`union` gives)."""
    pieces: list[Span] = []
    cursor = span.start
    for block in covered:
        if block.end <= cursor:
            continue
        if block.start >= span.end:
            break
        if block.start > cursor:
            pieces.append(Span(cursor, block.start))
        cursor = max(cursor, block.end)
        if cursor >= span.end:
            break
    if cursor < span.end:
        pieces.append(Span(cursor, span.end))
    return pieces


# --- the plan -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What one instrument and interval needs.

    Attributes:
        needed: Session time in the window holding complete candles.
        missing: The needed time never fetched (before merging).
        requests: The fewest requests fetching all of ``missing``, each within the cap.
    """

    needed: tuple[Span, ...]
    missing: tuple[Span, ...]
    requests: tuple[Span, ...]


def plan_requests(
    calendar: TradingCalendar,
    interval: str,
    window: Span,
    fetched: Iterable[Span],
    *,
    now: dt.datetime,
    cap_days: int | None = None,
) -> Plan:
    """The minimal request list for ``window`` given the ranges fetched already.

    Args:
        calendar: Trading sessions covering the window's years.
        interval: A Kite interval (:data:`INTERVALS`).
        window: Requested candle start times ``[start, end)``.
        fetched: Ranges fetched before (any order, may overlap).
        now: The present: forming candles are not needed yet.
        cap_days: Kite's range cap in days; :data:`RANGE_CAP_DAYS` of the interval by default.

    Returns:
        The plan; ``requests`` is empty when nothing is missing.
    """
    cap = cap_days if cap_days is not None else RANGE_CAP_DAYS[check_interval(interval)]
    needed = needed_spans(calendar, interval, window, now=now)
    covered = union(fetched)
    # (index of the needed span, missing piece), to know what separates two pieces.
    pieces = [(i, piece) for i, span in enumerate(needed) for piece in subtract(span, covered)]
    groups = _merge_across_closed_time(needed, pieces)
    requests: list[Span] = []
    for group in groups:
        requests.extend(_split(group, cap))
    return Plan(tuple(needed), tuple(p for _, p in pieces), tuple(requests))


def _merge_across_closed_time(
    needed: Sequence[Span], pieces: Sequence[tuple[int, Span]]
) -> list[list[Span]]:
    """Group pieces whose separation holds no needed time (only nights/weekends/holidays)."""
    groups: list[list[Span]] = []
    previous: tuple[int, Span] | None = None
    for index, piece in pieces:
        joins = (
            previous is not None
            and index == previous[0] + 1
            and previous[1].end == needed[previous[0]].end
            and piece.start == needed[index].start
        )
        if joins:
            groups[-1].append(piece)
        else:
            groups.append([piece])
        previous = (index, piece)
    return groups


def request_limit(start: dt.datetime, cap_days: int) -> dt.datetime:
    """The latest end of a request starting at ``start``: midnight IST after day D + cap."""
    day = start.astimezone(IST).date() + dt.timedelta(days=cap_days + 1)
    return dt.datetime.combine(day, dt.time(), tzinfo=IST)


def _split(group: Sequence[Span], cap_days: int) -> list[Span]:
    """Greedy cover of the needed pieces of one group with requests within the cap.

    Each request starts at the earliest uncovered needed instant and ends at the end of the
    last needed time it reaches, so no request covers more closed time than it must.
    """
    requests: list[Span] = []
    i, cursor = 0, group[0].start
    while i < len(group):
        start = cursor
        limit = request_limit(start, cap_days)
        end = start
        while i < len(group) and group[i].start < limit:
            piece_end = min(group[i].end, limit)
            end = piece_end
            if piece_end < group[i].end:
                cursor = piece_end
                break
            i += 1
            if i < len(group):
                cursor = group[i].start
        requests.append(Span(start, end))
    return requests


def total_requests(plans: Iterable[Plan]) -> int:
    """Requests of several plans together."""
    return sum(len(plan.requests) for plan in plans)
