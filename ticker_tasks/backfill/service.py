"""Backfill orchestration: plan and fan out a job, run its chunks, finish it.

The Celery tasks in :mod:`ticker_tasks.tasks.backfill` only decode arguments, call these
methods and apply the retry policy; everything the service needs comes in explicitly (the
process :class:`~ticker_tasks.runtime.Runtime`, where to store the run task's state, how to
enqueue chunks), so it knows no Celery.

Life of a job (``job_id`` is the run task's id):

1. ``start``: resolve the instruments in the registry, choose the account, plan the minimal
   requests (:mod:`ticker_tasks.backfill.planning`), store the job and its chunk list in
   ``backfill_jobs`` (status ``planning``), create the progress counters, store the run
   task's ``PROGRESS`` state, enqueue the chunks, mark the job ``running``. A job with
   nothing to fetch is finished at once (``requests = 0``).
2. ``run_chunk`` (one per request, on any worker): fetch through the account's
   :class:`~ticker_tasks.kite.rest.KiteRestClient` (the global historical rate limit of its
   api_key), upsert the candles and record the fetched range in one transaction, count the
   chunk once in Redis and store the run task's ``PROGRESS``.
3. The chunk that counts last builds the summary, stores it in ``backfill_jobs`` and as the
   run task's ``SUCCESS`` result. A chunk whose ``PROGRESS`` write lands after that repairs
   it (it re-reads the ``finished`` flag after writing), so the final state always wins.

An expired (inactive) contract whose history Kite no longer serves (``InputException`` or no
candle at all) ends as ``unavailable_expired``: no range is recorded, nothing is deleted.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from sqlalchemy import update

from schemas.backfill import BackfillRequest
from ticker_tasks import accounts
from ticker_tasks.backfill import store
from ticker_tasks.backfill.planning import KITE_TO_MARGIN, ChunkSpec, plan_job
from ticker_tasks.backfill.progress import ChunkOutcome, ChunkStatus, JobProgress
from ticker_tasks.backfill.summary import build_summary
from ticker_tasks.crypto import CredentialCipher
from ticker_tasks.db.models import BackfillJob, Instrument
from ticker_tasks.errors import BrokerRejected, NotFound, ServiceUnavailable
from ticker_tasks.market.registry import RegistryCache
from ticker_tasks.runtime import Runtime

log = logging.getLogger(__name__)

PLANNING = "planning"
RUNNING = "running"
FINISHED = ("succeeded", "failed")
#: Namespace of job ids derived from run task ids longer than the job id column.
_JOB_NAMESPACE = uuid.UUID("6f1c7d1e-52a4-4a8e-9c55-0b3c2f1d8a90")


class ResultSink(Protocol):
    """Where the run task's state lives (Celery's result backend in the tasks)."""

    def progress(self, run_task_id: str, meta: dict[str, Any]) -> None:
        """Store ``PROGRESS`` with ``meta``."""

    def success(self, run_task_id: str, summary: dict[str, Any]) -> None:
        """Store ``SUCCESS`` with the summary as the result."""


ChunkSender = Callable[[Sequence[ChunkSpec]], None]


def job_id_for(run_task_id: str) -> str:
    """The job id of a run task: its id, or a stable UUID when the id is too long."""
    if len(run_task_id) <= 36:
        return run_task_id
    return str(uuid.uuid5(_JOB_NAMESPACE, run_task_id))


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class BackfillService:
    """Backfill jobs on one process's runtime.

    Args:
        runtime: Settings, database, Redis and Kite clients of this process.
        sink: Where the run task's state is stored.
        clock: The present (candles still forming are not fetched).
    """

    def __init__(
        self,
        runtime: Runtime,
        sink: ResultSink,
        *,
        clock: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        self._runtime = runtime
        self._sink = sink
        self._clock = clock
        self.progress = JobProgress(runtime.redis, ttl_s=runtime.settings.result_expires_s)

    # --- the run task -----------------------------------------------------------------------

    def start(
        self, request: BackfillRequest, *, run_task_id: str, send: ChunkSender
    ) -> dict[str, Any] | None:
        """Plan the job and enqueue its chunks.

        Returns:
            The summary when the job finished at once (nothing to fetch, or a redelivered
            run of a finished job); None when chunks were enqueued (or are running).

        Raises:
            NotFound: Unknown instrument or account, or an empty registry.
            AuthError: The account is disabled or has no token.
            ValidationError: The request breaks a rule the schema cannot express.
        """
        runtime = self._runtime
        job_id = job_id_for(run_task_id)
        with runtime.sessions.begin() as session:
            job = session.get(BackfillJob, job_id)
            if job is not None:
                return self._resume(job, run_task_id, send)
            account_id = request.account_id or accounts.default_account_id(session)
            accounts.kite_account(session, self._cipher(), account_id)  # enabled, with a token
            table = RegistryCache(runtime.redis, check_interval_s=0).current()
            plan = plan_job(
                session,
                table,
                request,
                job_id=job_id,
                account_id=account_id,
                now=self._clock(),
                cap_overrides=runtime.settings.backfill_range_cap_days,
            )
            record_key, _ = store.range_keys(
                request.interval, oi=request.oi, continuous=request.continuous
            )
            meta = {
                "payload": request.model_dump(mode="json", by_alias=True),
                "run_task_id": run_task_id,
                "account_id": account_id,
                "interval": request.interval,
                "series": store.series_key(request.interval, continuous=request.continuous),
                "range_key": record_key,
                "window": [plan.window.start.isoformat(), plan.window.end.isoformat()],
                "instruments": [p.as_json() for p in plan.instruments],
                "chunks": [chunk.to_kwargs() for chunk in plan.chunks],
            }
            session.add(
                BackfillJob(
                    job_id=job_id, request=meta, status=PLANNING, requests_total=len(plan.chunks)
                )
            )
        log.info("backfill %s: %d requests planned", job_id, len(plan.chunks))
        return self._fan_out(job_id, run_task_id, list(plan.chunks), send)

    def _resume(
        self, job: BackfillJob, run_task_id: str, send: ChunkSender
    ) -> dict[str, Any] | None:
        """A redelivered run task: finish, wait, or re-send the stored chunks."""
        if job.status in FINISHED:
            self._sink.success(run_task_id, job.summary)
            return job.summary
        if job.status == RUNNING:
            return None
        chunks = [ChunkSpec.from_kwargs(kwargs) for kwargs in job.request["chunks"]]
        return self._fan_out(job.job_id, run_task_id, chunks, send)

    def _fan_out(
        self, job_id: str, run_task_id: str, chunks: list[ChunkSpec], send: ChunkSender
    ) -> dict[str, Any] | None:
        self.progress.start(job_id, run_task_id=run_task_id, total=len(chunks))
        if not chunks:
            return self.finalize(job_id)
        counters = self.progress.counters(job_id)
        if counters is not None:
            # Before any chunk runs: a chunk's later state must never be overwritten by this.
            self._sink.progress(run_task_id, counters.meta(job_id))
        send(chunks)
        with self._runtime.sessions.begin() as session:
            session.execute(
                update(BackfillJob)
                .where(BackfillJob.job_id == job_id, BackfillJob.status == PLANNING)
                .values(status=RUNNING)
            )
        return None

    # --- chunks -------------------------------------------------------------------------------

    def run_chunk(self, spec: ChunkSpec) -> ChunkOutcome | None:
        """Fetch, store and count one chunk; None when it was counted before (a duplicate).

        Raises:
            RetryableError: Rate limit, open circuit, broker or service unavailable: retry.
            PermanentError: Kite refused (other than an expired contract), bad credentials.
        """
        runtime = self._runtime
        if self.progress.is_counted(spec.job_id, spec.chunk_id):
            self._after_duplicate(spec.job_id)
            return None
        with runtime.sessions() as session:
            instrument = session.get(Instrument, spec.instrument_id)
            if instrument is None:
                raise NotFound(f"unknown instrument_id {spec.instrument_id}")
            active = instrument.active
            account = accounts.kite_account(session, self._cipher(), spec.account_id)
        client = runtime.kite_clients.get(account)
        try:
            rows = client.historical_data(
                spec.token,
                spec.start,
                spec.end - KITE_TO_MARGIN,
                spec.interval,
                continuous=spec.continuous,
                oi=spec.oi,
            )
        except BrokerRejected as exc:
            if active or exc.error_type != "InputException":
                raise
            outcome = self._outcome(spec, "unavailable_expired", requests=1, detail=str(exc))
        else:
            if not rows and not active:
                detail = "Kite sent no candle for this expired contract"
                outcome = self._outcome(spec, "unavailable_expired", requests=1, detail=detail)
            else:
                outcome = self._store(spec, rows)
        self._complete(spec, outcome)
        return outcome

    def _store(self, spec: ChunkSpec, rows: list[dict[str, Any]]) -> ChunkOutcome:
        candles = store.candles_from_kite(rows, spec.span)
        series = store.series_key(spec.interval, continuous=spec.continuous)
        record_key, _ = store.range_keys(spec.interval, oi=spec.oi, continuous=spec.continuous)
        with self._runtime.sessions.begin() as session:
            written = store.upsert_candles(session, spec.instrument_id, series, candles)
            store.record_fetched(
                session, spec.instrument_id, record_key, spec.span, job_id=spec.job_id
            )
        return self._outcome(spec, "fetched", requests=1, candles=written)

    def fail_chunk(self, spec: ChunkSpec, detail: str, *, answered: bool) -> None:
        """Count a chunk that cannot succeed (its range is left in the summary).

        Args:
            spec: The chunk.
            detail: Why (the error's message).
            answered: Whether Kite answered the request (it counts as a request).
        """
        log.warning("backfill %s chunk %s failed: %s", spec.job_id, spec.chunk_id, detail)
        self._complete(spec, self._outcome(spec, "failed", requests=int(answered), detail=detail))

    def note_retry(self, spec: ChunkSpec) -> int:
        """Count a transient failure of a chunk; returns how many it had."""
        return self.progress.note_failure(spec.job_id, spec.chunk_id)

    @staticmethod
    def _outcome(
        spec: ChunkSpec, status: ChunkStatus, *, requests: int, candles: int = 0, detail: str = ""
    ) -> ChunkOutcome:
        return ChunkOutcome(
            instrument_id=spec.instrument_id,
            start=spec.start.isoformat(),
            end=spec.end.isoformat(),
            status=status,
            requests=requests,
            candles=candles,
            detail=detail[:500],
        )

    def _complete(self, spec: ChunkSpec, outcome: ChunkOutcome) -> None:
        completion = self.progress.complete_chunk(spec.job_id, spec.chunk_id, outcome)
        if completion.finishes_job:
            self.finalize(spec.job_id)
        elif completion.counted:
            self._report_progress(spec.job_id)
        else:
            self._after_duplicate(spec.job_id)

    def _report_progress(self, job_id: str) -> None:
        counters = self.progress.counters(job_id)
        if counters is None or counters.finished:
            return
        self._sink.progress(counters.run_task_id, counters.meta(job_id))
        # The job may have finished between the read and the write: the final state wins.
        summary = self.progress.summary(job_id)
        if summary is not None:
            self._sink.success(counters.run_task_id, summary)

    def _after_duplicate(self, job_id: str) -> None:
        """A chunk ran again: repair a finish that was interrupted (crash, Redis outage)."""
        counters = self.progress.counters(job_id)
        if counters is None or not counters.complete:
            return
        summary = self.progress.summary(job_id) if counters.finished else None
        if summary is None:
            self.finalize(job_id)
        else:
            self._sink.success(counters.run_task_id, summary)

    # --- the end --------------------------------------------------------------------------------

    def finalize(self, job_id: str) -> dict[str, Any]:
        """Build the summary, store it in ``backfill_jobs`` and as the run task's result."""
        counters = self.progress.counters(job_id)
        if counters is None:
            raise ServiceUnavailable(f"backfill {job_id}: progress counters vanished from Redis")
        outcomes = self.progress.outcomes(job_id)
        with self._runtime.sessions.begin() as session:
            job = session.get(BackfillJob, job_id)
            if job is None:
                raise NotFound(f"unknown backfill job {job_id}")
            summary = build_summary(job_id, job.request, counters, outcomes)
            job.status = str(summary["status"])
            job.requests_total = max(counters.total, 0)
            job.requests_done = counters.done
            job.candles_written = counters.candles
            job.summary = summary
            job.finished_at = _utcnow()
        self.progress.finish(job_id, summary)
        self._sink.success(counters.run_task_id, summary)
        log.info(
            "backfill %s %s: %d requests, %d candles, %d ranges left",
            job_id,
            summary["status"],
            summary["requests"],
            summary["candles_written"],
            len(summary["ranges_left"]),
        )
        return summary

    def _cipher(self) -> CredentialCipher:
        return CredentialCipher.from_settings(self._runtime.settings)
