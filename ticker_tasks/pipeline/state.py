"""Latest state per instrument in Redis: newest data wins, whatever the delivery order.

Layout (two hashes, field = ``instrument_token`` in decimal):

- :data:`STATE_ORDER_KEY` (``ticker_tasks:state:order``): the order key of the row held;
- :data:`STATE_ROWS_KEY` (``ticker_tasks:state:rows``): the row held, packed as one
  :data:`~ticker_tasks.kite.codec.TICK_DTYPE` record (numpy native layout, ``itemsize`` bytes);
  :func:`read_snapshot` unpacks it.

"Newer" is the tuple ``(tick time, cumulative volume, receive time, connection, seq, packet
index)`` compared lexicographically, where the tick time is the exchange timestamp when the
packet has one, else the frame's receive time. :func:`order_keys` encodes that tuple as a
fixed-width **all-digit** string (times in microseconds, 17 digits; volume 20 digits;
connection as 3 decimal digits per UTF-8 byte padded to 64 bytes; seq 19 digits; index 9
digits), so the Lua script compares tuples with one string comparison. Digits only matter:
Redis' Lua compares strings with ``strcoll``, and equal-length digit strings order the same in
every locale. Every row of every batch has a distinct key, so the merge is a max over a total
order: the same state whatever the order or number of deliveries.

The merge runs in the same Lua script as the publication (see
:mod:`ticker_tasks.pipeline.publish`), one round trip per batch.
"""

from __future__ import annotations

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

CONNECTION_BYTES: Final = 64
_TIME_DIGITS: Final = 17
_VOLUME_DIGITS: Final = 20
_SEQ_DIGITS: Final = 19
_INDEX_DIGITS: Final = 9
_ROW_VOID: Final = np.dtype((np.void, TICK_DTYPE.itemsize))


def _digits(values: npt.NDArray[np.int64], width: int) -> npt.NDArray[np.str_]:
    """Zero-padded decimal strings of non-negative integers (vectorized)."""
    clipped = np.clip(values, 0, 10**width - 1) if width < 19 else np.maximum(values, 0)
    text: npt.NDArray[np.str_] = np.char.zfill(clipped.astype(np.int64).astype(str), width)
    return text


def _micros(seconds: FloatArray) -> npt.NDArray[np.int64]:
    micros: npt.NDArray[np.int64] = np.rint(np.asarray(seconds) * 1e6).astype(np.int64)
    return micros


def connection_digits(connection: str) -> str:
    """The connection as fixed-width digits (3 per UTF-8 byte, padded to 64 bytes)."""
    raw = connection.encode()
    if len(raw) > CONNECTION_BYTES:
        raise ValueError(f"connection longer than {CONNECTION_BYTES} bytes: {connection!r}")
    return "".join(f"{byte:03d}" for byte in raw).ljust(3 * CONNECTION_BYTES, "0")


def row_prefixes(rows: Rows, received_at: FloatArray) -> npt.NDArray[np.str_]:
    """Per row: digits of (tick time, cumulative volume, receive time)."""
    tick_us = _digits(_micros(tick_times(rows, received_at)), _TIME_DIGITS)
    volume = _digits(rows["volume_traded"].astype(np.int64), _VOLUME_DIGITS)
    recv_us = _digits(_micros(received_at), _TIME_DIGITS)
    prefixes: npt.NDArray[np.str_] = np.char.add(np.char.add(tick_us, volume), recv_us)
    return prefixes


def batch_suffix(connection: str, seq: int) -> str:
    """Digits of (connection, seq): the part of the order key shared by a batch's rows."""
    return connection_digits(connection) + f"{seq:0{_SEQ_DIGITS}d}"


def index_digits(packet_index: npt.NDArray[np.int64]) -> npt.NDArray[np.str_]:
    """Digits of each row's packet index (its position in the decoded batch)."""
    return _digits(np.asarray(packet_index, dtype=np.int64), _INDEX_DIGITS)


def order_keys(
    rows: Rows,
    received_at: FloatArray,
    connection: str,
    seq: int,
    packet_index: npt.NDArray[np.int64] | None = None,
) -> list[str]:
    """The full order key of each row (what the Lua script builds from its arguments).

    ``packet_index`` defaults to ``0..n-1`` (``rows`` is the whole decoded batch).
    """
    suffix = batch_suffix(connection, seq)
    if packet_index is None:
        packet_index = np.arange(rows.size, dtype=np.int64)
    keys = np.char.add(
        np.char.add(row_prefixes(rows, received_at), suffix), index_digits(packet_index)
    )
    return [str(key) for key in keys.tolist()]


def packed_rows(rows: Rows) -> list[bytes]:
    """Each row as its raw record bytes (the stored state value)."""
    packed: list[bytes] = np.ascontiguousarray(rows).view(_ROW_VOID).tolist()
    return packed


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
