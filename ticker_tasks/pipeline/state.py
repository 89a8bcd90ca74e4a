"""Latest state per instrument in Redis: newest data wins, whatever the delivery order.

Layout (two hashes, field = ``instrument_token`` in decimal):

- :data:`STATE_ORDER_KEY` (``ticker_tasks:state:order``): the order key of the row held;
- :data:`STATE_ROWS_KEY` (``ticker_tasks:state:rows``): the row held, packed as one
  :data:`~ticker_tasks.kite.codec.TICK_DTYPE` record (numpy native layout, ``itemsize`` bytes);
  :func:`read_snapshot` unpacks it.

"Newer" is the tuple ``(tick time, cumulative volume, receive time, connection, seq, packet
index)`` compared lexicographically, where the tick time is the exchange timestamp when the
packet has one, else the frame's receive time. :func:`order_key_array` encodes that tuple as an
80-character **all-digit** string (times in microseconds, 16 digits each; volume 13 digits;
the connection as the CRC-32 of its name, 10 digits; seq 19 digits; packet index 6 digits),
so the Lua scripts compare tuples with one string comparison. Digits only matter: Redis' Lua
compares strings with ``strcoll``, and equal-length digit strings order the same in every
locale. Every row of every batch has a distinct key (two connections whose names share a
CRC-32 would also need the same seq, tick time, volume and receive time to tie), so the merge
is a max over a total order: the same state whatever the order or number of deliveries.

The merge runs in the same Lua script as the publication (see
:mod:`ticker_tasks.pipeline.publish`), one round trip per batch.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import redis

from ticker_tasks.kite.codec import TICK_DTYPE
from ticker_tasks.pipeline.columns import Rows
from ticker_tasks.pipeline.validate import FloatArray, tick_times

STATE_ORDER_KEY: Final = "ticker_tasks:state:order"
STATE_ROWS_KEY: Final = "ticker_tasks:state:rows"

_TIME_DIGITS: Final = 16
_VOLUME_DIGITS: Final = 13
_SEQ_DIGITS: Final = 19
_INDEX_DIGITS: Final = 6
#: Length of an order key (digits).
KEY_BYTES: Final = 2 * _TIME_DIGITS + _VOLUME_DIGITS + 10 + _SEQ_DIGITS + _INDEX_DIGITS
#: The key below every real key (a bar with no open interest yet holds it as its OI key).
NO_KEY: Final = "0" * KEY_BYTES


def _clipped(values: npt.NDArray[np.int64], width: int) -> npt.NDArray[np.int64]:
    """Values clipped to ``[0, 10**width - 1]``."""
    clipped: npt.NDArray[np.int64] = np.clip(np.asarray(values, dtype=np.int64), 0, 10**width - 1)
    return clipped


def _digit_columns(values: npt.NDArray[np.int64], width: int) -> npt.NDArray[np.uint8]:
    """ASCII digits of each value, zero-padded to ``width``: an ``(n, width)`` byte array."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    digits: npt.NDArray[np.uint8] = (
        (_clipped(values, width)[:, None] // powers) % 10 + ord("0")
    ).astype(np.uint8)
    return digits


def micros(seconds: FloatArray) -> npt.NDArray[np.int64]:
    """Epoch seconds as integer microseconds."""
    out: npt.NDArray[np.int64] = np.rint(np.asarray(seconds) * 1e6).astype(np.int64)
    return out


def batch_suffix(connection: str, seq: int) -> str:
    """Digits of (connection, seq): the part of the order key shared by a batch's rows."""
    return f"{zlib.crc32(connection.encode()):010d}{min(max(seq, 0), 10**_SEQ_DIGITS - 1):019d}"


def order_key_array(
    rows: Rows,
    received_at: FloatArray,
    packet_index: npt.NDArray[np.int64],
    *,
    connection: str,
    seq: int,
) -> npt.NDArray[np.uint8]:
    """The order key of each row as an ``(n, KEY_BYTES)`` array of ASCII digits (vectorized).

    Built once per batch and shared by the state merge and the bars; ``keys.tobytes()`` is
    what the Lua scripts slice (``KEY_BYTES`` per row).
    """
    received_at = np.asarray(received_at, dtype=np.float64)
    suffix = np.frombuffer(batch_suffix(connection, seq).encode(), dtype=np.uint8)
    keys: npt.NDArray[np.uint8] = np.hstack(
        [
            _digit_columns(micros(tick_times(rows, received_at)), _TIME_DIGITS),
            _digit_columns(rows["volume_traded"].astype(np.int64), _VOLUME_DIGITS),
            _digit_columns(micros(received_at), _TIME_DIGITS),
            np.broadcast_to(suffix, (rows.size, suffix.size)),
            _digit_columns(np.asarray(packet_index, dtype=np.int64), _INDEX_DIGITS),
        ]
    )
    return keys


def packed_rows(rows: Rows) -> bytes:
    """The rows' records, concatenated (``itemsize`` bytes each: the stored state values).

    Canonical bytes: fields are copied one by one into zeroed records, so the padding
    between fields is zero whatever memory the rows came from, and equal rows pack equal.
    """
    canonical = np.zeros(rows.size, dtype=TICK_DTYPE)
    for name in TICK_DTYPE.names or ():
        canonical[name] = rows[name]
    return canonical.tobytes()


def unpack_rows(values: list[bytes]) -> Rows:
    """Rows from stored state values (inverse of :func:`packed_rows`)."""
    rows: Rows = np.frombuffer(b"".join(values), dtype=TICK_DTYPE).copy()
    return rows


@dataclass(frozen=True)
class Snapshot:
    """The state of every instrument and the stream position it reflects.

    Attributes:
        stream_id: Id of the newest tick-stream entry already merged into ``rows`` ("0-0"
            when the stream is empty): read the stream strictly after it.
        rows: One row per instrument, ascending ``instrument_token``.
        order_keys: The order key of each row (same order).
    """

    stream_id: str
    rows: Rows
    order_keys: list[str]


def read_snapshot(client: redis.Redis, stream_key: str) -> Snapshot:
    """Read the whole state and the newest stream id atomically (MULTI/EXEC).

    Raises:
        redis.RedisError: Redis is unreachable.
    """
    pipe = client.pipeline(transaction=True)
    pipe.xrevrange(stream_key, "+", "-", count=1)
    pipe.hgetall(STATE_ROWS_KEY)
    pipe.hgetall(STATE_ORDER_KEY)
    last, stored, keys = pipe.execute()
    stream_id = last[0][0].decode() if last else "0-0"
    tokens = sorted(stored, key=int)
    rows = unpack_rows([stored[t] for t in tokens])
    return Snapshot(
        stream_id=stream_id,
        rows=rows,
        order_keys=[keys[t].decode() for t in tokens],
    )
