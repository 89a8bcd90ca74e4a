"""The summary of a finished backfill job, built from its plan and its chunks' outcomes."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from schemas.backfill import BackfillSummary, InstrumentOutcome, RangeLeft
from ticker_tasks.backfill.progress import ChunkOutcome, Counters

UNAVAILABLE = "unavailable_expired"
FAILED = "failed"


def build_summary(
    job_id: str, meta: Mapping[str, Any], counters: Counters, outcomes: Iterable[ChunkOutcome]
) -> dict[str, Any]:
    """The :class:`~schemas.backfill.BackfillSummary` of a job, as JSON.

    Args:
        job_id: The job.
        meta: The job's ``backfill_jobs.request`` (its plan).
        counters: The job's counters once every chunk was counted.
        outcomes: Every chunk's outcome.
    """
    by_instrument: dict[int, list[ChunkOutcome]] = defaultdict(list)
    for outcome in outcomes:
        by_instrument[outcome.instrument_id].append(outcome)
    instruments: list[InstrumentOutcome] = []
    ranges_left: list[RangeLeft] = []
    for item in meta["instruments"]:
        instrument_id = int(item["instrument_id"])
        key = f"{item['exchange']}:{item['tradingsymbol']}"
        done = sorted(by_instrument.get(instrument_id, []), key=lambda o: o.start)
        left = [
            RangeLeft.model_validate(
                {
                    "instrument_id": instrument_id,
                    "instrument": key,
                    "from": start,
                    "to": end,
                    "reason": UNAVAILABLE,
                    "detail": "the token now belongs to another contract",
                }
            )
            for start, end in item.get("unavailable", [])
        ]
        left += [
            RangeLeft.model_validate(
                {
                    "instrument_id": instrument_id,
                    "instrument": key,
                    "from": o.start,
                    "to": o.end,
                    "reason": o.status,
                    "detail": o.detail,
                }
            )
            for o in done
            if o.status != "fetched"
        ]
        reasons = {r.reason for r in left}
        status = FAILED if FAILED in reasons else UNAVAILABLE if reasons else "complete"
        instruments.append(
            InstrumentOutcome(
                instrument=str(item["instrument"]),
                instrument_id=instrument_id,
                instrument_token=int(item["instrument_token"]),
                exchange=str(item["exchange"]),
                tradingsymbol=str(item["tradingsymbol"]),
                active=bool(item["active"]),
                status=status,
                requests=sum(o.requests for o in done),
                candles_written=sum(o.candles for o in done),
            )
        )
        ranges_left.extend(left)
    summary = BackfillSummary(
        job_id=job_id,
        status="failed" if any(r.reason == FAILED for r in ranges_left) else "succeeded",
        interval=str(meta["interval"]),
        account_id=str(meta["account_id"]),
        requests=counters.requests,
        retries=counters.retries,
        candles_written=counters.candles,
        chunks=max(counters.total, 0),
        instruments=instruments,
        ranges_left=ranges_left,
    )
    return summary.model_dump(mode="json", by_alias=True)
