"""THE tick publisher: state merge, stream append and pub/sub in one Lua round trip per batch.

Per batch (after validation) :class:`Publisher` runs one script that atomically

1. records ``(connection, seq)`` in :data:`PUBLISHED_KEY` (dedup window) and stops if the
   batch was already published (a redelivery publishes nothing and changes nothing);
2. merges each row into the latest state (:mod:`ticker_tasks.pipeline.state`), newest wins;
3. appends one message to the stream :data:`STREAM_KEY` (``MAXLEN ~``), field ``m``;
4. publishes one message per mode present on :data:`CHANNEL` (``ticker_tasks:ticks:{mode}``).

Message (JSON, one per batch and channel; the channel message holds only its mode's rows)::

    {"v": 1, "batch_id": "...", "connection": "ACC:0", "seq": 7, "source": "stream",
     "received_at": [...one per row...], "packet_index": [...one per row...],
     "columns": {"instrument_token": [...], "mode": ["full", ...], "last_price": [...], ...}}

``packet_index`` is each row's position in its decoded batch, so ``(connection, seq,
packet_index)`` names one tick uniquely (rejected rows leave holes). ``columns`` holds
:data:`~ticker_tasks.pipeline.columns.MESSAGE_COLUMNS`; depth columns hold a 5-element list
per row. :func:`schemas.ticks.to_kite_ticks` turns a message into the dicts
kiteconnect's ``KiteTicker`` yields.

Late joiner (snapshot then stream, no gap, no duplicate):

1. :func:`~ticker_tasks.pipeline.state.read_snapshot` reads, in one MULTI/EXEC, the newest
   stream id ``L`` and the whole state. Because the script that merges state also appends to
   the stream, atomically, the snapshot contains exactly the batches of the entries up to and
   including ``L``.
2. Read the stream strictly after ``L`` (``XREAD BLOCK <timeout> STREAMS
   ticker_tasks:ticks:stream L``, then from the last id read). Every entry after ``L`` is a
   batch not in the snapshot; each is read once. Merge rows by the order key (newest wins) to
   keep the same state as Redis.
3. If the stream's first entry is already newer than ``L`` when first read (``MAXLEN``
   trimmed past a very slow reader), restart from step 1.

Pub/sub subscribers get the same messages live but with no replay; use the stream to resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import msgpack  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt
import orjson
import redis

from ticker_tasks.pipeline.columns import Rows, column_arrays, mode_names
from ticker_tasks.pipeline.state import (
    KEY_BYTES,
    STATE_ORDER_KEY,
    STATE_ROWS_KEY,
    order_key_array,
    packed_rows,
)
from ticker_tasks.pipeline.validate import BatchRef, FloatArray, IntArray

MESSAGE_VERSION: Final = 1
STREAM_KEY: Final = "ticker_tasks:ticks:stream"
CHANNEL: Final = "ticker_tasks:ticks:{mode}"
PUBLISHED_KEY: Final = "ticker_tasks:ticks:published:{connection}"
#: A connection silent this long forgets its published-batch window.
PUBLISHED_TTL_S: Final = 7 * 86_400
MODES: Final = ("ltp", "quote", "full")

# KEYS: published, state order, state rows, stream, channel 1..n.
# ARGV: seq, window, ttl, maxlen, stream message, key size, n, channel message 1..n, then
#       tokens (msgpack array), order keys (concatenated), packed rows (concatenated), row
#       size. (A few blobs rather than arguments per row: per-argument overhead dominates.)
_APPLY: Final = """
if redis.call('ZADD', KEYS[1], 'NX', ARGV[1], ARGV[1]) == 0 then
  return {0, 0}
end
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[2]) + 1))
redis.call('EXPIRE', KEYS[1], ARGV[3])
local n = tonumber(ARGV[7])
local key_size = tonumber(ARGV[6])
-- Newest row of each token within the batch.
local best, value, tokens = {}, {}, {}
local row_tokens = cmsgpack.unpack(ARGV[8 + n])
local order_keys, packed, size = ARGV[9 + n], ARGV[10 + n], tonumber(ARGV[11 + n])
for i = 1, #row_tokens do
  local token = row_tokens[i]
  local key = string.sub(order_keys, (i - 1) * key_size + 1, i * key_size)
  local seen = best[token]
  if not seen then
    tokens[#tokens + 1] = token
  end
  if (not seen) or key > seen then
    best[token] = key
    value[token] = string.sub(packed, (i - 1) * size + 1, i * size)
  end
end
-- Compare with the state held, in chunks (Lua's unpack has a stack limit).
local chunk = 500
local applied = 0
for first = 1, #tokens, chunk do
  local last = math.min(first + chunk - 1, #tokens)
  local part = {}
  for k = first, last do part[#part + 1] = tokens[k] end
  local held = redis.call('HMGET', KEYS[2], unpack(part))
  local keys_out, rows_out = {}, {}
  for k = 1, #part do
    local token = part[k]
    if (not held[k]) or best[token] > held[k] then
      keys_out[#keys_out + 1] = token
      keys_out[#keys_out + 1] = best[token]
      rows_out[#rows_out + 1] = token
      rows_out[#rows_out + 1] = value[token]
    end
  end
  if #keys_out > 0 then
    redis.call('HSET', KEYS[2], unpack(keys_out))
    redis.call('HSET', KEYS[3], unpack(rows_out))
    applied = applied + #keys_out / 2
  end
end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', 'm', ARGV[5])
for j = 1, n do
  redis.call('PUBLISH', KEYS[4 + j], ARGV[7 + j])
end
return {1, applied}
"""


def encode_message(message: dict[str, Any]) -> bytes:
    """Compact JSON (numpy columns written directly by ``orjson``)."""
    return orjson.dumps(message, option=orjson.OPT_SERIALIZE_NUMPY)


def build_message(
    batch: BatchRef, rows: Rows, received_at: FloatArray, packet_index: IntArray
) -> dict[str, Any]:
    """The message of ``rows`` (see the module docstring)."""
    return {
        "v": MESSAGE_VERSION,
        "batch_id": batch.batch_id,
        "connection": batch.connection,
        "seq": batch.seq,
        "source": batch.source,
        "received_at": np.ascontiguousarray(received_at, dtype=np.float64),
        "packet_index": np.ascontiguousarray(packet_index, dtype=np.int64),
        "columns": column_arrays(rows),
    }


def channel_messages(
    batch: BatchRef,
    rows: Rows,
    received_at: FloatArray,
    packet_index: IntArray,
    *,
    whole: bool = False,
) -> dict[str, dict[str, Any]]:
    """One message per mode present in ``rows``: channel name -> message.

    With ``whole`` (the caller knows every row has one mode) the message is not built: the
    value is an empty dict and the caller sends the batch's stream message instead.
    """
    names = mode_names(rows)
    out: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        picked = np.flatnonzero(names == mode)
        if picked.size and whole:
            out[CHANNEL.format(mode=mode)] = {}
        elif picked.size:
            out[CHANNEL.format(mode=mode)] = build_message(
                batch,
                rows[picked],
                np.asarray(received_at)[picked],
                np.asarray(packet_index)[picked],
            )
    return out


@dataclass(frozen=True)
class PublishOutcome:
    """What one publication did.

    Attributes:
        new: False when ``(connection, seq)`` was already published (nothing changed).
        applied: Rows that replaced the state of their instrument.
    """

    new: bool
    applied: int


class Publisher:
    """Merges state and publishes tick batches (the one tick publisher)."""

    def __init__(self, client: redis.Redis, *, stream_maxlen: int, dedup_window: int) -> None:
        self._client = client
        self._stream_maxlen = stream_maxlen
        self._dedup_window = dedup_window
        self._script = client.register_script(_APPLY)

    def publish(
        self,
        batch: BatchRef,
        rows: Rows,
        received_at: FloatArray,
        packet_index: IntArray | None = None,
        order_keys: npt.NDArray[np.uint8] | None = None,
    ) -> PublishOutcome:
        """Merge ``rows`` into the state and publish them, once per ``(connection, seq)``.

        Args:
            batch: Identity of the batch.
            rows: Validated rows (nothing is done when empty).
            received_at: Receive time of each row's frame.
            packet_index: Each row's index in the decoded batch (``0..n-1`` when omitted).
            order_keys: The rows' order keys (:func:`~ticker_tasks.pipeline.state.order_key_array`),
                computed here when omitted.

        Raises:
            redis.RedisError: Redis is unreachable (the script is atomic: all or nothing).
        """
        if rows.size == 0:
            return PublishOutcome(new=False, applied=0)
        received_at = np.asarray(received_at, dtype=np.float64)
        index = (
            np.arange(rows.size, dtype=np.int64)
            if packet_index is None
            else np.asarray(packet_index, dtype=np.int64)
        )
        stream_message = encode_message(build_message(batch, rows, received_at, index))
        channels = channel_messages(
            batch, rows, received_at, index, whole=len(np.unique(rows["mode"])) == 1
        )
        if order_keys is None:
            order_keys = order_key_array(
                rows, received_at, index, connection=batch.connection, seq=batch.seq
            )
        args: list[Any] = [
            batch.seq,
            self._dedup_window,
            PUBLISHED_TTL_S,
            self._stream_maxlen,
            stream_message,
            KEY_BYTES,
            len(channels),
            *[
                stream_message if len(channels) == 1 else encode_message(message)
                for message in channels.values()
            ],
        ]
        args.extend(
            (
                msgpack.packb(rows["instrument_token"].astype(np.int64).tolist()),
                np.ascontiguousarray(order_keys).tobytes(),
                packed_rows(rows),
                rows.dtype.itemsize,
            )
        )
        keys = [
            PUBLISHED_KEY.format(connection=batch.connection),
            STATE_ORDER_KEY,
            STATE_ROWS_KEY,
            STREAM_KEY,
            *channels,
        ]
        new, applied = self._script(keys=keys, args=args)
        return PublishOutcome(new=bool(new), applied=int(applied))


def publish_message(
    client: redis.Redis, *, stream: str, channel: str, message: dict[str, Any], maxlen: int
) -> None:
    """Append ``message`` to ``stream`` (``MAXLEN ~``) and publish it on ``channel``, atomically.

    For messages that need no per-batch deduplication (closed bars, see
    :mod:`ticker_tasks.bars.close`).

    Raises:
        redis.RedisError: Redis is unreachable.
    """
    payload = encode_message(message)
    pipe = client.pipeline(transaction=True)
    pipe.xadd(stream, {"m": payload}, maxlen=maxlen, approximate=True)
    pipe.publish(channel, payload)
    pipe.execute()
