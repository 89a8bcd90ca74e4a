"""Tick batch task (queue ``ticks``): ``ticker_tasks.ticks.process_batch``.

A batch (:class:`schemas.ticks.TickBatch`, sent as msgpack by the streamers) is validated,
its frames decoded in one vectorized call, and its packets counted **once** per
``(connection, seq)``, whatever the number of deliveries (broker redelivery after a crash,
a streamer resending after a publish timeout or replaying its journal).

After counting, the decoded rows go through the tick pipeline
(:class:`ticker_tasks.pipeline.batch.TickPipeline`): validation (rejections counted in
``ticks_rejected{reason}`` and sampled to ``ticker_tasks:ticks:dead_letter``, on the first
counted delivery only), then one Lua script that merges the latest state and publishes the
batch once per ``(connection, seq)`` (see :mod:`ticker_tasks.pipeline.publish`), and a
second one that merges the batch into the open 1-minute bars (:mod:`ticker_tasks.bars.live`).

Redis keys (data store):

- ``ticker_tasks:ticks:seen:{connection}``: sorted set of the sequence numbers already
  counted (member and score = ``seq``), trimmed to the newest ``TICKER_TICKS_DEDUP_WINDOW``
  entries and expiring :data:`SEEN_TTL_S` after the connection's last batch.
- ``ticker_tasks:ticks:packets``, ``ticker_tasks:ticks:frames``: hashes, field = connection,
  value = packets decoded / frames received, counted once per batch.
- ``ticker_tasks:ticks:checksum``: hash, field = connection, value = the sum of the CRC-32 of
  every frame counted, modulo 2**32: an order-independent fingerprint of the bytes received,
  so a replay or a test harness can prove the frames arrived byte for byte.

The dedup check and the counters are one Lua script (one round trip per batch, atomic: a
batch is either counted with its sequence number recorded, or not at all). Bad payloads and
bad frames are counted in the shared metrics (:mod:`ticker_tasks.metrics`):
``tick_batches_rejected{reason}``, ``tick_frames_bad{connection}``,
``tick_packets_unknown{connection}``, and deliveries of a batch already counted in
``tick_batches_duplicate{connection}``. A rejected payload is logged on one line and dropped,
never retried: resending the same bytes cannot make it valid.
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import numpy as np
import redis
from pydantic import ValidationError as PydanticValidationError

from schemas.ticks import TickBatch
from ticker_tasks.app import app
from ticker_tasks.errors import ServiceUnavailable
from ticker_tasks.kite.codec import DecodeStats, Rows, decode_many
from ticker_tasks.metrics import Metrics
from ticker_tasks.pipeline.batch import TickPipeline
from ticker_tasks.pipeline.validate import BatchRef
from ticker_tasks.tasks.base import BaseTask
from ticker_tasks.tasks.retry import retry

log = logging.getLogger(__name__)

PROCESS_BATCH: Final = "ticker_tasks.ticks.process_batch"
SEEN_KEY: Final = "ticker_tasks:ticks:seen:{connection}"
PACKETS_KEY: Final = "ticker_tasks:ticks:packets"
FRAMES_KEY: Final = "ticker_tasks:ticks:frames"
CHECKSUM_KEY: Final = "ticker_tasks:ticks:checksum"
#: A connection silent this long forgets its dedup window (its streamer seeds new sequence
#: numbers from the clock, so nothing older can be mistaken for new).
SEEN_TTL_S: Final = 7 * 86_400
_CRC_MODULUS: Final = 2**32

# KEYS: seen, packets, frames, checksum. ARGV: seq, connection, packets, frames, crc, window, ttl.
_COUNT_ONCE: Final = """
if redis.call('ZADD', KEYS[1], 'NX', ARGV[1], ARGV[1]) == 0 then
  return 0
end
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[6]) + 1))
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('HINCRBY', KEYS[2], ARGV[2], ARGV[3])
redis.call('HINCRBY', KEYS[3], ARGV[2], ARGV[4])
local sum = (tonumber(redis.call('HGET', KEYS[4], ARGV[2]) or '0') + tonumber(ARGV[5]))
redis.call('HSET', KEYS[4], ARGV[2], string.format('%d', sum % 4294967296))
return 1
"""


def frames_checksum(frames: list[bytes]) -> int:
    """Sum of the CRC-32 of each frame, modulo 2**32 (what ``CHECKSUM_KEY`` accumulates)."""
    return sum(zlib.crc32(frame) for frame in frames) % _CRC_MODULUS


@dataclass(frozen=True)
class BatchOutcome:
    """What one delivery of a batch did."""

    connection: str
    seq: int
    new: bool
    frames: int
    packets: int
    bad_frames: int
    unknown_packets: int
    good: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    published: bool = False
    applied: int = 0
    bars_changed: int = 0


def count_batch(
    client: redis.Redis,
    batch: TickBatch,
    *,
    window: int,
    stats: DecodeStats | None = None,
) -> BatchOutcome:
    """Count the packets and frames of ``batch`` unless ``(connection, seq)`` was seen.

    Args:
        client: Redis data store.
        batch: The batch.
        window: Sequence numbers remembered per connection.
        stats: The batch's decode counters when already decoded; decoded here otherwise.

    Raises:
        redis.RedisError: Redis is unreachable (nothing was counted).
    """
    if stats is None:
        stats = DecodeStats()
        decode_many(batch.frames, stats)
    script = client.register_script(_COUNT_ONCE)
    new = script(
        keys=[
            SEEN_KEY.format(connection=batch.connection),
            PACKETS_KEY,
            FRAMES_KEY,
            CHECKSUM_KEY,
        ],
        args=[
            batch.seq,
            batch.connection,
            stats.packets,
            len(batch.frames),
            frames_checksum(batch.frames),
            window,
            SEEN_TTL_S,
        ],
    )
    outcome = BatchOutcome(
        connection=batch.connection,
        seq=batch.seq,
        new=bool(new),
        frames=len(batch.frames),
        packets=stats.packets,
        bad_frames=stats.bad_frames,
        unknown_packets=stats.unknown_packets,
    )
    if not outcome.new:
        Metrics(client).incr("tick_batches_duplicate", connection=batch.connection)
    elif stats.bad_frames or stats.unknown_packets:
        metrics = Metrics(client)
        if stats.bad_frames:
            metrics.incr("tick_frames_bad", stats.bad_frames, connection=batch.connection)
        if stats.unknown_packets:
            metrics.incr("tick_packets_unknown", stats.unknown_packets, connection=batch.connection)
    return outcome


def run_batch(
    client: redis.Redis, pipeline: TickPipeline, batch: TickBatch, *, window: int
) -> BatchOutcome:
    """Decode once, count once per ``(connection, seq)``, then validate, merge and publish.

    Raises:
        redis.RedisError: Redis is unreachable.
    """
    stats = DecodeStats()
    rows: Rows
    rows, frame_index = decode_many(batch.frames, stats)
    counted = count_batch(client, batch, window=window, stats=stats)
    received_at = np.asarray(batch.received_at, dtype=np.float64)[frame_index]
    ref = BatchRef(
        batch_id=batch.batch_id, connection=batch.connection, seq=batch.seq, source=batch.source
    )
    done = pipeline.run(ref, rows, received_at, now=time.time(), report=counted.new)
    return BatchOutcome(
        **{
            **asdict(counted),
            "good": done.good,
            "rejected": done.rejected,
            "published": done.published,
            "applied": done.applied,
            "bars_changed": done.bars_changed,
        }
    )


def _describe(payload: dict[str, Any]) -> str:
    """Identify a rejected payload in a log line without dumping its frames."""
    fields = ("connection", "seq", "batch_id")
    known = [f"{key}={payload[key]!r}"[:80] for key in fields if key in payload]
    return " ".join(known) or f"keys={sorted(payload)[:8]!r}"


def _reject(client: redis.Redis, reason: str, detail: str) -> dict[str, Any]:
    Metrics(client).incr("tick_batches_rejected", reason=reason)
    log.warning("rejected tick batch (%s): %s", reason, detail)
    return {"rejected": reason}


@app.task(
    name=PROCESS_BATCH,
    bind=True,
    serializer="msgpack",
    acks_late=True,
    # Counting is idempotent per (connection, seq): running a batch again is safe.
    reject_on_worker_lost=True,
)
def process_batch(self: BaseTask, *args: Any, **payload: Any) -> dict[str, Any]:
    """Count, validate, merge and publish one tick batch (:class:`schemas.ticks.TickBatch`).

    Returns:
        The :class:`BatchOutcome` as a dict, or ``{"rejected": reason}`` for a bad payload.
    """
    runtime = self.runtime
    if args:
        return _reject(runtime.redis, "positional_args", f"{len(args)} positional arguments")
    try:
        batch = TickBatch.from_message(payload)
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        detail = f"{_describe(payload)}: {where or 'payload'}: {first.get('msg', 'invalid')}"
        return _reject(runtime.redis, "invalid", f"{detail} ({exc.error_count()} errors)")
    try:
        outcome = run_batch(
            runtime.redis,
            self.per_runtime("tick_pipeline", lambda rt: TickPipeline(rt.settings, rt.redis)),
            batch,
            window=runtime.settings.ticks_dedup_window,
        )
    except redis.RedisError as exc:
        raise retry(self, ServiceUnavailable(f"redis: {exc}")) from exc
    return asdict(outcome)
