"""Historical backfill: plan the fewest Kite requests, fetch them under the shared limit, store.

Modules: :mod:`~ticker_tasks.backfill.plan` (pure planning), :mod:`~ticker_tasks.backfill.store`
(candles and fetched ranges), :mod:`~ticker_tasks.backfill.planning` (a job's chunk list),
:mod:`~ticker_tasks.backfill.progress` (Redis counters), :mod:`~ticker_tasks.backfill.service`
(orchestration), :mod:`~ticker_tasks.backfill.cli` and :mod:`~ticker_tasks.backfill.bench`.
"""

#: The public task: plan a backfill and fan it out (payload ``schemas.backfill.BackfillRequest``).
RUN_TASK = "ticker_tasks.backfill.run"
#: The internal task fetching one Kite request of a job.
CHUNK_TASK = "ticker_tasks.backfill.chunk"
