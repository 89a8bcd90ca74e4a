"""The public tasks: name, queue and payload model of each."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from schemas.tasks import PingRequest


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
)
