"""Historical backfill tasks (queue ``backfill``): decode, call the service, retry.

``ticker_tasks.backfill.run`` (public, :class:`schemas.backfill.BackfillRequest`) plans the
job and fans it out as ``ticker_tasks.backfill.chunk`` tasks (internal), one per Kite request.
The run task returns at once: its state stays ``PROGRESS`` (meta ``{done, total, ...}``)
while the chunks run, and the chunk that finishes the job stores the summary as its
``SUCCESS`` result, so ``AsyncResult(run_id).get()`` waits for the whole job.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import redis
from celery import states
from celery.exceptions import Ignore, SoftTimeLimitExceeded
from kombu.exceptions import OperationalError
from pydantic import ValidationError as PydanticValidationError

from schemas.backfill import BackfillRequest
from ticker_tasks.app import app
from ticker_tasks.backfill import CHUNK_TASK, RUN_TASK
from ticker_tasks.backfill.planning import ChunkSpec
from ticker_tasks.backfill.service import BackfillService
from ticker_tasks.errors import (
    BrokerRejected,
    CircuitOpen,
    PermanentError,
    RateLimited,
    RetryableError,
    ServiceUnavailable,
    ValidationError,
)
from ticker_tasks.queues import BACKFILL
from ticker_tasks.tasks.base import BaseTask
from ticker_tasks.tasks.retry import countdown_for

log = logging.getLogger(__name__)


class CeleryResultSink:
    """Stores the run task's state in the result backend and tells Flower (task events).

    The backend holds what ``AsyncResult`` reads (``PROGRESS`` meta, then the summary). When
    task events are on, a ``task-progress`` event (shown by Flower as state ``PROGRESS`` with
    ``done``/``total`` fields) and a final ``task-succeeded`` event for the run task's id keep
    Flower's event-built view in step; they are monitoring only, so a failed send is logged.
    """

    def __init__(self, task: BaseTask) -> None:
        self._app = task.app
        self._hostname = str(task.request.hostname or "backfill")
        self._events = bool(task.app.conf.worker_send_task_events)

    def progress(self, run_task_id: str, meta: dict[str, Any]) -> None:
        """``PROGRESS`` with ``{done, total, ...}``."""
        self._store(run_task_id, meta, "PROGRESS")
        self._event("task-progress", run_task_id, **meta)

    def success(self, run_task_id: str, summary: dict[str, Any]) -> None:
        """``SUCCESS`` with the summary."""
        self._store(run_task_id, summary, states.SUCCESS)
        brief = {k: summary.get(k) for k in ("status", "requests", "candles_written")}
        self._event("task-succeeded", run_task_id, result=json.dumps(brief))

    def _store(self, run_task_id: str, value: dict[str, Any], state: str) -> None:
        try:
            self._app.backend.store_result(run_task_id, value, state)
        except (redis.RedisError, ConnectionError, TimeoutError, OSError) as exc:
            raise ServiceUnavailable(f"result backend unreachable: {exc}") from exc

    def _event(self, kind: str, run_task_id: str, **fields: Any) -> None:
        if not self._events:
            return
        try:
            with self._app.events.default_dispatcher(hostname=self._hostname) as dispatcher:
                dispatcher.send(kind, uuid=run_task_id, retry=False, **fields)
        except (OperationalError, OSError) as exc:
            log.warning("backfill: %s event for %s not sent: %s", kind, run_task_id, exc)


def _service(task: BaseTask) -> BackfillService:
    return BackfillService(task.runtime, CeleryResultSink(task))


@app.task(
    name=RUN_TASK,
    bind=True,
    ignore_result=False,
    acks_late=True,
    reject_on_worker_lost=True,
)
def run(self: BaseTask, **payload: Any) -> dict[str, Any]:
    """Plan a backfill and enqueue its requests (see :class:`schemas.backfill.BackfillRequest`).

    Returns the summary when nothing needed fetching; otherwise ends with ``Ignore`` so the
    state the chunks store (``PROGRESS``, then ``SUCCESS``) is never overwritten.
    """
    try:
        request = BackfillRequest.model_validate(payload)
    except PydanticValidationError as exc:
        raise ValidationError(f"invalid backfill request: {exc}") from exc

    def send(chunks: Sequence[ChunkSpec]) -> None:
        with self.app.producer_or_acquire() as producer:
            for spec in chunks:
                chunk.apply_async(kwargs=spec.to_kwargs(), queue=BACKFILL, producer=producer)

    run_task_id = str(self.request.id)
    try:
        summary = _service(self).start(request, run_task_id=run_task_id, send=send)
    except RetryableError as exc:
        cap = float(self.runtime.settings.retry_backoff_max_s)
        countdown = countdown_for(exc, int(self.request.retries), cap_s=cap)
        raise self.retry(exc=exc, countdown=countdown, max_retries=8) from exc
    if summary is None:
        raise Ignore()
    return summary


@app.task(
    name=CHUNK_TASK,
    bind=True,
    ignore_result=True,
    acks_late=True,
    reject_on_worker_lost=True,
)
def chunk(self: BaseTask, **kwargs: Any) -> None:
    """Fetch one historical request, store it and count it in the job's progress (internal)."""
    spec = ChunkSpec.from_kwargs(kwargs)
    service = _service(self)
    settings = self.runtime.settings
    cap = float(settings.retry_backoff_max_s)
    try:
        service.run_chunk(spec)
    except (RateLimited, CircuitOpen) as exc:
        # Waiting for a slot or for the circuit: retry when it frees up; never a failure.
        countdown = countdown_for(exc, 0, cap_s=cap)
        raise self.retry(exc=exc, countdown=countdown, max_retries=None) from exc
    except (RetryableError, SoftTimeLimitExceeded) as exc:
        try:
            failures = service.note_retry(spec)
        except ServiceUnavailable:
            failures = int(self.request.retries) + 1  # Redis is down too: Celery's count
        if failures > settings.backfill_max_retries:
            service.fail_chunk(spec, f"gave up after {failures} failures: {exc}", answered=False)
            return
        error = exc if isinstance(exc, RetryableError) else ServiceUnavailable(str(exc))
        countdown = countdown_for(error, failures - 1, cap_s=cap)
        raise self.retry(exc=exc, countdown=countdown, max_retries=None) from exc
    except PermanentError as exc:
        service.fail_chunk(spec, str(exc), answered=isinstance(exc, BrokerRejected))
    except Exception as exc:
        # A bug: count the chunk as failed so the job still finishes, then let Celery see it.
        service.fail_chunk(spec, f"{type(exc).__name__}: {exc}", answered=False)
        raise
