"""Vectorized validation of decoded tick rows: bad data is counted, sampled and dropped.

:func:`validate` is pure: boolean masks over the whole batch, no per-tick Python. Each rejected
row is attributed to the **first** failing check, in the order of :data:`REASONS`:

- ``unknown_token``: no active instrument holds the token (registry), or no registry at all;
- ``non_positive_price``: last price not a finite number above 0;
- ``ohlc_inconsistent``: where the packet carries OHLC (not LTP mode) and high and low are set:
  ``low > high``, or the last price outside ``[low, high]`` by more than
  ``TICKER_TICKS_PRICE_TOLERANCE`` (a fraction);
- ``crossed_depth``: full-mode packets whose best bid and best ask are both set with
  ``bid >= ask``;
- ``future_timestamp`` / ``stale_timestamp``: where the packet carries an exchange timestamp,
  later than the reference time plus ``TICKER_TICKS_CLOCK_SKEW_S`` or older than the reference
  time minus ``TICKER_TICKS_MAX_AGE_S``. The reference is the current time for live
  (``stream``) batches and each frame's receive time for ``replay`` and ``mock`` batches (a
  replayed capture is old by design);
- ``outside_session``: the tick time (exchange timestamp, else the frame's receive time) is
  outside an NSE session; not checked for ``replay`` and ``mock`` batches.

:func:`report_rejections` adds the counts to ``ticks_rejected{reason}`` and writes at most
``TICKER_TICKS_DEAD_LETTER_SAMPLE`` rejected rows per batch to the dead-letter stream
:data:`DEAD_LETTER_STREAM` (``MAXLEN ~``), in one pipelined round trip.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import redis

from ticker_tasks.kite.codec_layout import LEN_FULL, LEN_INDEX_FULL, LEN_LTP
from ticker_tasks.market.calendar import IST, CalendarRangeError, TradingCalendar
from ticker_tasks.metrics import Metrics
from ticker_tasks.pipeline.columns import Rows, columns

DEAD_LETTER_STREAM: Final = "ticker_tasks:ticks:dead_letter"
REASONS: Final[tuple[str, ...]] = (
    "unknown_token",
    "non_positive_price",
    "ohlc_inconsistent",
    "crossed_depth",
    "future_timestamp",
    "stale_timestamp",
    "outside_session",
)
#: Sources whose ticks are not held to the trading session.
OFF_SESSION_SOURCES: Final = frozenset({"mock", "replay"})

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
#: Which instrument tokens are known (vectorized registry lookup).
KnownTokens = Callable[[IntArray], BoolArray]
#: Which epoch-second instants fall inside a trading session (vectorized).
InSession = Callable[[FloatArray], BoolArray]


@dataclass(frozen=True)
class Limits:
    """The tunables of :func:`validate` (from Settings)."""

    price_tolerance: float
    clock_skew_s: float
    max_age_s: float


@dataclass(frozen=True)
class Validated:
    """Outcome of :func:`validate`.

    Attributes:
        good: The rows that passed, in input order.
        good_index: Index in the input of each good row.
        rejected_index: Index in the input of each rejected row, ascending.
        rejected_reason: Index into :data:`REASONS` of each rejected row.
        counts: Rejected rows per reason (only reasons with at least one row).
    """

    good: Rows
    good_index: IntArray
    rejected_index: IntArray
    rejected_reason: IntArray
    counts: dict[str, int]


def tick_times(rows: Rows, received_at: FloatArray) -> FloatArray:
    """Exchange timestamp where the packet has one (32/184-byte, non-zero), else receive time."""
    has_ts = _has_exchange_timestamp(rows)
    times: FloatArray = np.where(has_ts, rows["exchange_timestamp"], received_at).astype(np.float64)
    return times


def _has_exchange_timestamp(rows: Rows) -> BoolArray:
    length = rows["packet_length"]
    carries = (length == LEN_FULL) | (length == LEN_INDEX_FULL)
    mask: BoolArray = carries & (rows["exchange_timestamp"] > 0)
    return mask


def calendar_session(calendar: TradingCalendar) -> InSession:
    """An :data:`InSession` from a calendar: one lookup per distinct second, not per tick.

    Instants outside the calendar's years count as outside any session.
    """

    def in_session(times: FloatArray) -> BoolArray:
        seconds = np.floor(times).astype(np.int64)
        distinct, inverse = np.unique(seconds, return_inverse=True)
        open_flags = np.zeros(distinct.size, dtype=np.bool_)
        for i, second in enumerate(distinct.tolist()):  # distinct seconds, a few per batch
            try:
                at = dt.datetime.fromtimestamp(second, tz=IST)
                open_flags[i] = calendar.is_market_open(at)
            except (CalendarRangeError, OverflowError, OSError, ValueError):
                open_flags[i] = False
        result: BoolArray = open_flags[inverse.reshape(-1)]
        return result

    return in_session


def _checks(
    rows: Rows,
    received_at: FloatArray,
    *,
    known: BoolArray,
    reference: FloatArray,
    limits: Limits,
    in_session: InSession | None,
) -> list[BoolArray]:
    """One "bad" mask per reason of :data:`REASONS`, same order."""
    last = rows["last_price"]
    high, low = rows["high"], rows["low"]
    non_positive = ~(np.isfinite(last) & (last > 0))
    has_ohlc = (rows["packet_length"] != LEN_LTP) & (high > 0) & (low > 0)
    slack = limits.price_tolerance
    outside = (last < low * (1.0 - slack)) | (last > high * (1.0 + slack))
    ohlc_bad = has_ohlc & ((low > high) | outside)
    bid, ask = rows["bid_price"][:, 0], rows["ask_price"][:, 0]
    full = rows["packet_length"] == LEN_FULL
    crossed = full & (bid > 0) & (ask > 0) & (bid >= ask)
    has_ts = _has_exchange_timestamp(rows)
    stamp = rows["exchange_timestamp"].astype(np.float64)
    future = has_ts & (stamp > reference + limits.clock_skew_s)
    stale = has_ts & (stamp < reference - limits.max_age_s)
    if in_session is None:
        off_session = np.zeros(rows.size, dtype=np.bool_)
    else:
        off_session = ~in_session(tick_times(rows, received_at))
    return [~known, non_positive, ohlc_bad, crossed, future, stale, off_session]


def validate(
    rows: Rows,
    received_at: FloatArray,
    *,
    source: str,
    known_tokens: KnownTokens | None,
    in_session: InSession,
    now: float,
    limits: Limits,
) -> Validated:
    """Split ``rows`` into good rows and rejected ones (see the module docstring).

    Args:
        rows: Decoded rows of :data:`~ticker_tasks.kite.codec.TICK_DTYPE`.
        received_at: Receive time of each row's frame, epoch seconds (same length).
        source: The batch's source (``stream``, ``replay`` or ``mock``).
        known_tokens: Registry lookup; None when no registry is loaded (every token unknown).
        in_session: Session lookup (see :func:`calendar_session`).
        now: Current time, epoch seconds (reference of live batches).
        limits: Tolerances from Settings.

    Returns:
        The good rows, the rejected indices with their reason, and counts per reason.
    """
    received_at = np.asarray(received_at, dtype=np.float64)
    if received_at.shape != rows.shape:
        raise ValueError(f"{received_at.size} receive times for {rows.size} rows")
    tokens = rows["instrument_token"].astype(np.int64)
    if known_tokens is None:
        known = np.zeros(rows.size, dtype=np.bool_)
    else:
        known = np.asarray(known_tokens(tokens), dtype=np.bool_)
    off_session = source in OFF_SESSION_SOURCES
    reference = received_at if off_session else np.full(rows.size, now, dtype=np.float64)
    masks = _checks(
        rows,
        received_at,
        known=known,
        reference=reference,
        limits=limits,
        in_session=None if off_session else in_session,
    )
    stacked = np.vstack(masks) if rows.size else np.zeros((len(REASONS), 0), dtype=np.bool_)
    bad = stacked.any(axis=0)
    first_reason = stacked.argmax(axis=0)
    rejected_index = np.flatnonzero(bad).astype(np.int64)
    rejected_reason = first_reason[rejected_index].astype(np.int64)
    tally = np.bincount(rejected_reason, minlength=len(REASONS))
    counts = {REASONS[i]: int(n) for i, n in enumerate(tally.tolist()) if n}
    good_index = np.flatnonzero(~bad).astype(np.int64)
    return Validated(
        good=rows[good_index],
        good_index=good_index,
        rejected_index=rejected_index,
        rejected_reason=rejected_reason,
        counts=counts,
    )


@dataclass(frozen=True)
class BatchRef:
    """Identity of a batch in rejection reports and published messages."""

    batch_id: str
    connection: str
    seq: int
    source: str


def report_rejections(
    client: redis.Redis,
    batch: BatchRef,
    rows: Rows,
    received_at: FloatArray,
    outcome: Validated,
    *,
    sample: int,
    maxlen: int,
) -> None:
    """Count rejections by reason and sample up to ``sample`` of them to the dead letters.

    Each dead-letter entry has the fields ``batch_id``, ``connection``, ``seq``, ``source``,
    ``index`` (row in the decoded batch), ``reason``, ``received_at`` and ``row`` (JSON object
    of the row's message columns). One pipelined round trip; nothing when nothing was rejected.

    Raises:
        redis.RedisError: Redis is unreachable.
    """
    if outcome.rejected_index.size == 0:
        return
    pipe = client.pipeline(transaction=False)
    metrics = Metrics(pipe)
    for reason, count in outcome.counts.items():
        metrics.incr("ticks_rejected", count, reason=reason)
    picked = outcome.rejected_index[:sample]
    sampled = columns(rows[picked])
    reasons = outcome.rejected_reason[:sample].tolist()
    for k, index in enumerate(picked.tolist()):  # at most `sample` entries per batch
        row = {name: values[k] for name, values in sampled.items()}
        fields: dict[str, str | int | float] = {
            "batch_id": batch.batch_id,
            "connection": batch.connection,
            "seq": batch.seq,
            "source": batch.source,
            "index": index,
            "reason": REASONS[reasons[k]],
            "received_at": float(received_at[index]),
            "row": json.dumps(row, separators=(",", ":")),
        }
        pipe.xadd(DEAD_LETTER_STREAM, fields, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
    pipe.execute()
