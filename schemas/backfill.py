"""Historical backfill: the payload of ``ticker_tasks.backfill.run``, its progress and summary.

Enqueue with plain JSON keyword arguments (``from`` is a Python keyword, so the model field is
``from_`` with the alias ``from``; always send ``"from"``)::

    app.send_task(
        "ticker_tasks.backfill.run",
        kwargs=BackfillRequest(
            instruments=["NSE:INFY", 408065], interval="minute", from_="2024-01-01", to="2024-03-31"
        ).model_dump(mode="json", by_alias=True, exclude_none=True),
        queue="backfill",
    )

While the job runs, the task's state is ``PROGRESS`` with :class:`BackfillProgress` as its
meta; when it is done the task's result is a :class:`BackfillSummary`.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

Interval = Literal[
    "minute", "3minute", "5minute", "10minute", "15minute", "30minute", "60minute", "day"
]

_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SYMBOL = re.compile(r"^[A-Za-z][A-Za-z0-9_]*:\S.*$")


def parse_when(value: Any) -> Any:
    """``YYYY-MM-DD`` is a date; any other string is an ISO-8601 datetime."""
    if isinstance(value, str):
        text = value.strip()
        if _DATE_ONLY.match(text):
            return dt.date.fromisoformat(text)
        try:
            return dt.datetime.fromisoformat(text)
        except ValueError as exc:
            raise ValueError(f"not an ISO-8601 date or datetime: {value!r}") from exc
    return value


When = Annotated[dt.datetime | dt.date, BeforeValidator(parse_when)]


class BackfillRequest(BaseModel):
    """Keyword arguments of ``ticker_tasks.backfill.run``: fetch missing historical candles.

    Only what was never fetched is requested from Kite (the service records the ranges it
    fetched per instrument and interval); the job is split into requests within Kite's range
    caps and shares the historical rate limit with every other worker.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    instruments: list[int | str] = Field(
        ...,
        min_length=1,
        max_length=1000,
        description="Instrument tokens, or EXCHANGE:TRADINGSYMBOL (which also finds expired "
        "contracts; a token names its current holder, since Kite reuses tokens).",
    )
    interval: Interval = Field(..., description="Kite candle interval.")
    from_: When = Field(
        ...,
        alias="from",
        description="First candle start: a date (midnight IST) or an ISO-8601 datetime (naive = "
        "IST), inclusive.",
    )
    to: When = Field(
        ...,
        description="A date (inclusive: the whole day) or an ISO-8601 datetime (naive = IST, "
        "exclusive).",
    )
    oi: bool = Field(False, description="Also fetch open interest (derivatives).")
    continuous: bool = Field(
        False,
        description="Continuous series of a future (stored apart from the contract's own "
        "candles, under the interval with the suffix '+c').",
    )
    account_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_-]{1,32}$",
        description="Account whose api_key fetches (and whose rate limit is used); default: "
        "the first enabled account with a valid or unchecked token.",
    )

    @field_validator("instruments")
    @classmethod
    def _check_instruments(cls, values: list[int | str]) -> list[int | str]:
        for value in values:
            if isinstance(value, int):
                if value <= 0:
                    raise ValueError(f"instrument token must be positive: {value}")
            elif not (value.isdigit() or _SYMBOL.match(value)):
                raise ValueError(f"not a token nor EXCHANGE:TRADINGSYMBOL: {value!r}")
        return values

    @model_validator(mode="after")
    def _check_range(self) -> BackfillRequest:
        start, end = _comparable(self.from_), _comparable(self.to)
        if not isinstance(self.to, dt.datetime):
            end += dt.timedelta(days=1)
        if start >= end:
            raise ValueError(f"'from' ({self.from_}) must be before 'to' ({self.to})")
        return self


def _comparable(value: dt.date | dt.datetime) -> dt.datetime:
    ist = dt.timezone(dt.timedelta(hours=5, minutes=30))
    if isinstance(value, dt.datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=ist)
    return dt.datetime.combine(value, dt.time(), tzinfo=ist)


class BackfillProgress(BaseModel):
    """Meta of the run task's ``PROGRESS`` state (also readable in Flower's task result)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    job_id: str
    done: int = Field(..., ge=0, description="Chunks (requests planned) finished.")
    total: int = Field(..., ge=0, description="Chunks planned.")
    requests: int = Field(0, ge=0, description="Historical requests answered by Kite so far.")
    candles_written: int = Field(0, ge=0)


class RangeLeft(BaseModel):
    """A range the job could not fetch, and why."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    instrument_id: int
    instrument: str = Field(..., description="EXCHANGE:TRADINGSYMBOL.")
    from_: dt.datetime = Field(..., alias="from")
    to: dt.datetime
    reason: Literal["unavailable_expired", "failed"]
    detail: str = ""


class InstrumentOutcome(BaseModel):
    """What the job did for one instrument."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    instrument: str = Field(..., description="The reference as requested.")
    instrument_id: int
    instrument_token: int
    exchange: str
    tradingsymbol: str
    active: bool
    status: Literal["complete", "unavailable_expired", "failed"]
    requests: int = Field(..., ge=0)
    candles_written: int = Field(..., ge=0)


class BackfillSummary(BaseModel):
    """Result of ``ticker_tasks.backfill.run`` (also stored in ``backfill_jobs.summary``)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    job_id: str
    status: Literal["succeeded", "failed"] = Field(
        ...,
        description="'failed' when some range failed for another reason than an expired "
        "contract (see ranges_left).",
    )
    interval: str
    account_id: str
    requests: int = Field(..., ge=0, description="Historical requests answered by Kite.")
    retries: int = Field(..., ge=0, description="Chunk attempts retried (transient errors).")
    candles_written: int = Field(..., ge=0)
    chunks: int = Field(..., ge=0, description="Requests planned.")
    instruments: list[InstrumentOutcome]
    ranges_left: list[RangeLeft]
