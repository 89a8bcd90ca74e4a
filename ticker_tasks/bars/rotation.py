"""Which instruments the completeness check has verified for a session, kept in Redis.

``ticker_tasks:completeness:{day}`` is a sorted set per session day (IST date, ISO format):
member ``instrument_id``, score the Unix time of its last check. It expires
:data:`ROTATION_TTL_S` after the last write, so old sessions stay inspectable for a week.

Candidates (:func:`stream_candidates`) are the active instruments with ``source = 'stream'``
minute bars in the session. A candidate is *due* when it was never checked for the session,
or when one of its stream bars of the session was written after its last check (a journal
replay arriving late): the bar writer stamps ``updated_at`` on every write, and the check
stamps the bars it confirms with the time it records here. Due instruments are ordered
never-checked first (by ``instrument_id``), then by the age of their last check, so an
instrument checked this session is not checked again before every other one was.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ticker_tasks.bars.compare import MINUTE, STREAM
from ticker_tasks.db.models import Candle, Instrument
from ticker_tasks.market.calendar import Session as TradingSession

ROTATION_KEY = "ticker_tasks:completeness:{day}"
#: Lifetime of a session's rotation state after its last write.
ROTATION_TTL_S = 7 * 86_400


@dataclass(frozen=True, slots=True)
class Candidate:
    """An instrument with stream bars in the session.

    Attributes:
        instrument_id: The instrument.
        instrument_token: Its Kite token (the historical request's key).
        last_write: Unix time of the newest write of one of its stream bars of the session.
    """

    instrument_id: int
    instrument_token: int
    last_write: float


class CheckRotation:
    """The rotation state of one session day."""

    def __init__(self, client: redis.Redis, day: dt.date) -> None:
        self._client = client
        self.key = ROTATION_KEY.format(day=day.isoformat())

    def checked(self) -> dict[int, float]:
        """Last check time per instrument_id."""
        raw: list[tuple[bytes, float]] = self._client.zrange(  # type: ignore[assignment]
            self.key, 0, -1, withscores=True
        )
        return {int(member): float(score) for member, score in raw}

    def mark(self, instrument_id: int, at: float) -> None:
        """Record a check of ``instrument_id`` at Unix time ``at``."""
        pipe = self._client.pipeline(transaction=True)
        pipe.zadd(self.key, {str(instrument_id): at})
        pipe.expire(self.key, ROTATION_TTL_S)
        pipe.execute()

    def due(self, candidates: Sequence[Candidate]) -> list[Candidate]:
        """The candidates to check, in order (see the module notes)."""
        checked = self.checked()
        never = [c for c in candidates if c.instrument_id not in checked]
        again = [
            c
            for c in candidates
            if c.instrument_id in checked and c.last_write > checked[c.instrument_id]
        ]
        never.sort(key=lambda c: c.instrument_id)
        again.sort(key=lambda c: (checked[c.instrument_id], c.instrument_id))
        return never + again


def _utc(at: dt.datetime) -> dt.datetime:
    return at.replace(tzinfo=dt.UTC) if at.tzinfo is None else at.astimezone(dt.UTC)


def stream_candidates(db: Session, session: TradingSession) -> list[Candidate]:
    """Active instruments with stream minute bars in ``session``, with their newest write.

    One primary-key range probe per instrument not expired before the session.
    """
    start, end = _utc(session.open), _utc(session.close)
    last_write = (
        select(func.max(Candle.updated_at))
        .where(
            Candle.instrument_id == Instrument.instrument_id,
            Candle.interval == MINUTE,
            Candle.ts >= start,
            Candle.ts < end,
            Candle.source == STREAM,
        )
        .correlate(Instrument)
        .scalar_subquery()
    )
    inner = (
        select(
            Instrument.instrument_id, Instrument.instrument_token, last_write.label("last_write")
        )
        .where(Instrument.active, Instrument.expiry >= session.day)
        .subquery()
    )
    rows = db.execute(select(inner).where(inner.c.last_write.is_not(None)))
    return [Candidate(int(i), int(t), _utc(w).timestamp()) for i, t, w in rows]
