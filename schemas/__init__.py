"""Message contracts of ticker_tasks, for any service that talks to it.

This package depends on pydantic alone: other services install it to build and validate the
payloads of the public tasks, and services in other languages use the exported JSON Schema
files in ``schemas/json/``.
"""

from schemas.backfill import (
    BackfillProgress,
    BackfillRequest,
    BackfillSummary,
    InstrumentOutcome,
    RangeLeft,
)
from schemas.feed import OUTAGES_STREAM, Outage
from schemas.registry import PUBLIC_TASKS, TaskContract
from schemas.tasks import PingRequest
from schemas.ticks import OrderUpdate, TickBatch

__all__ = [
    "OUTAGES_STREAM",
    "PUBLIC_TASKS",
    "BackfillProgress",
    "BackfillRequest",
    "BackfillSummary",
    "InstrumentOutcome",
    "OrderUpdate",
    "Outage",
    "PingRequest",
    "RangeLeft",
    "TaskContract",
    "TickBatch",
]
