"""Progress of backfill jobs in Redis, updated atomically by the chunk tasks of every worker.

Keys of one job (all expire with the job's results, ``result_expires_s``)::

    ticker_tasks:backfill:{job_id}            hash: total, done, requests, retries, candles,
                                              unavailable, failed, run_task_id,
                                              finished (0/1), summary (JSON, once finished)
    ticker_tasks:backfill:{job_id}:chunks     set: ids of the chunks counted already
    ticker_tasks:backfill:{job_id}:outcomes   hash: chunk id -> ChunkOutcome JSON
    ticker_tasks:backfill:{job_id}:attempts   hash: chunk id -> transient failures so far

A chunk is counted once, however often it runs (redelivery after a crash, a duplicate
message): one Lua script adds its id to the set and, only if it was new, records its outcome
and bumps the counters. The chunk that brings ``done`` to ``total`` finishes the job.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import redis

from ticker_tasks.errors import ServiceUnavailable

KEY_PREFIX = "ticker_tasks:backfill"

ChunkStatus = Literal["fetched", "unavailable_expired", "failed"]

# KEYS: job hash, chunk set, outcomes hash. ARGV: chunk id, outcome JSON, requests, candles,
# unavailable (0/1), failed (0/1), ttl seconds. Returns {counted (0/1), done, total}.
_COMPLETE = """
local fresh = redis.call('SADD', KEYS[2], ARGV[1])
if fresh == 1 then
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'done', 1)
  redis.call('HINCRBY', KEYS[1], 'requests', tonumber(ARGV[3]))
  redis.call('HINCRBY', KEYS[1], 'candles', tonumber(ARGV[4]))
  redis.call('HINCRBY', KEYS[1], 'unavailable', tonumber(ARGV[5]))
  redis.call('HINCRBY', KEYS[1], 'failed', tonumber(ARGV[6]))
  for i = 1, 3 do redis.call('EXPIRE', KEYS[i], tonumber(ARGV[7])) end
end
local done = tonumber(redis.call('HGET', KEYS[1], 'done') or '0')
local total = tonumber(redis.call('HGET', KEYS[1], 'total') or '-1')
return {fresh, done, total}
"""


@dataclass(frozen=True)
class ChunkOutcome:
    """What one chunk did (stored as JSON, read back to build the summary)."""

    instrument_id: int
    start: str
    end: str
    status: ChunkStatus
    requests: int
    candles: int
    detail: str = ""

    def to_json(self) -> str:
        """Compact JSON."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> ChunkOutcome:
        """Parse :meth:`to_json` output."""
        data: dict[str, Any] = json.loads(raw)
        return cls(**data)


@dataclass(frozen=True)
class Counters:
    """The counters of one job's hash."""

    total: int
    done: int
    requests: int
    retries: int
    candles: int
    unavailable: int
    failed: int
    finished: bool
    run_task_id: str

    @property
    def complete(self) -> bool:
        """Whether every planned chunk was counted."""
        return self.total >= 0 and self.done >= self.total

    def meta(self, job_id: str) -> dict[str, Any]:
        """The ``PROGRESS`` meta of the run task (:class:`schemas.backfill.BackfillProgress`)."""
        return {
            "job_id": job_id,
            "done": self.done,
            "total": self.total,
            "requests": self.requests,
            "candles_written": self.candles,
        }


@dataclass(frozen=True)
class Completion:
    """The answer of :meth:`JobProgress.complete_chunk`."""

    counted: bool
    done: int
    total: int

    @property
    def finishes_job(self) -> bool:
        """Whether this chunk brought ``done`` to ``total``."""
        return self.counted and self.done == self.total


class JobProgress:
    """Progress of backfill jobs in Redis.

    Args:
        client: The Redis data store (its socket timeout bounds every call).
        ttl_s: Lifetime of a job's keys (the lifetime of task results).
    """

    def __init__(self, client: redis.Redis, *, ttl_s: int) -> None:
        self._redis = client
        self._ttl = ttl_s
        self._complete = client.register_script(_COMPLETE)

    @staticmethod
    def keys(job_id: str) -> tuple[str, str, str, str]:
        """Hash, chunk set, outcomes and attempts keys of a job."""
        base = f"{KEY_PREFIX}:{job_id}"
        return base, f"{base}:chunks", f"{base}:outcomes", f"{base}:attempts"

    def start(self, job_id: str, *, run_task_id: str, total: int) -> None:
        """Create (or keep, when the job restarts) a job's counters."""
        base = self.keys(job_id)[0]
        try:
            pipe = self._redis.pipeline()
            pipe.hsetnx(base, "run_task_id", run_task_id)
            pipe.hsetnx(base, "total", total)
            for name in ("done", "requests", "retries", "candles", "unavailable", "failed"):
                pipe.hsetnx(base, name, 0)
            pipe.hsetnx(base, "finished", 0)
            pipe.expire(base, self._ttl)
            pipe.execute()
        except redis.RedisError as exc:
            raise ServiceUnavailable(f"backfill progress: Redis unreachable: {exc}") from exc

    def counters(self, job_id: str) -> Counters | None:
        """The job's counters, or None when Redis holds no such job."""
        raw = self._call(lambda: self._redis.hgetall(self.keys(job_id)[0]))
        if not raw:
            return None
        values = {_text(k): _text(v) for k, v in raw.items()}
        return Counters(
            total=int(values.get("total", -1)),
            done=int(values.get("done", 0)),
            requests=int(values.get("requests", 0)),
            retries=int(values.get("retries", 0)),
            candles=int(values.get("candles", 0)),
            unavailable=int(values.get("unavailable", 0)),
            failed=int(values.get("failed", 0)),
            finished=values.get("finished") == "1",
            run_task_id=values.get("run_task_id", ""),
        )

    def is_counted(self, job_id: str, chunk_id: str) -> bool:
        """Whether the chunk was counted already (a duplicate run skips its request)."""
        return bool(self._call(lambda: self._redis.sismember(self.keys(job_id)[1], chunk_id)))

    def note_failure(self, job_id: str, chunk_id: str) -> int:
        """Count a transient failure of a chunk (a retry follows); returns the chunk's count."""
        base, _, _, attempts = self.keys(job_id)

        def run() -> Any:
            pipe = self._redis.pipeline()
            pipe.hincrby(attempts, chunk_id, 1)
            pipe.hincrby(base, "retries", 1)
            pipe.expire(attempts, self._ttl)
            return pipe.execute()

        return int(self._call(run)[0])

    def complete_chunk(self, job_id: str, chunk_id: str, outcome: ChunkOutcome) -> Completion:
        """Count a chunk once, with its outcome."""
        base, chunks, outcomes, _ = self.keys(job_id)
        args: list[str | int] = [
            chunk_id,
            outcome.to_json(),
            outcome.requests,
            outcome.candles,
            int(outcome.status == "unavailable_expired"),
            int(outcome.status == "failed"),
            self._ttl,
        ]
        counted, done, total = self._call(
            lambda: self._complete(keys=[base, chunks, outcomes], args=args, client=self._redis)
        )
        return Completion(counted=bool(counted), done=int(done), total=int(total))

    def outcomes(self, job_id: str) -> list[ChunkOutcome]:
        """Every counted chunk's outcome."""
        raw = self._call(lambda: self._redis.hvals(self.keys(job_id)[2]))
        return [ChunkOutcome.from_json(value) for value in raw]

    def finish(self, job_id: str, summary: dict[str, Any]) -> None:
        """Store the summary and mark the job finished (one command)."""
        base = self.keys(job_id)[0]
        text = json.dumps(summary)
        self._call(lambda: self._redis.hset(base, mapping={"summary": text, "finished": 1}))

    def summary(self, job_id: str) -> dict[str, Any] | None:
        """The finished job's summary, or None while it runs."""
        raw = self._call(lambda: self._redis.hget(self.keys(job_id)[0], "summary"))
        if raw is None:
            return None
        summary: dict[str, Any] = json.loads(raw)
        return summary

    def _call(self, command: Callable[[], Any]) -> Any:
        try:
            return command()
        except redis.RedisError as exc:
            raise ServiceUnavailable(f"backfill progress: Redis unreachable: {exc}") from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
