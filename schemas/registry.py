"""The public tasks: name, queue and payload model of each."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from schemas.backfill import BackfillRequest
from schemas.tasks import PingRequest
from schemas.ticks import OrderUpdate, TickBatch


@dataclass(frozen=True)
class TaskContract:
    """How another service enqueues one task: ``send_task(name, kwargs=..., queue=queue)``."""

    name: str
    queue: str
    payload: type[BaseModel]
    description: str


PUBLIC_TASKS: tuple[TaskContract, ...] = (
    TaskContract(
        name="ticker_tasks.maintenance.ping",
        queue="maintenance",
        payload=PingRequest,
        description="Health round trip through a worker (database and Redis checked).",
    ),
    TaskContract(
        name="ticker_tasks.backfill.run",
        queue="backfill",
        payload=BackfillRequest,
        description="Fetch the historical candles never fetched (fewest Kite requests, shared "
        "3 req/s limit); state PROGRESS {done, total}, result BackfillSummary.",
    ),
    TaskContract(
        name="ticker_tasks.ticks.process_batch",
        queue="ticks",
        payload=TickBatch,
        description="Decode a batch of raw ticker frames (msgpack; base64 strings in JSON) and "
        "count its packets once per (connection, seq).",
    ),
    TaskContract(
        name="ticker_tasks.orders.update",
        queue="orders",
        payload=OrderUpdate,
        description="Record a raw Kite order update: Redis stream ticker_tasks:orders:updates "
        "and, for a known order, its history (once per order, status and update time).",
    ),
)
