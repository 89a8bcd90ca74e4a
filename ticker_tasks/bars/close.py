"""The bar closer: turns bars of finished minutes into ``candles`` rows and messages.

One run (the beat task ``ticker_tasks.bars.close``, every ``TICKER_BARS_CLOSE_INTERVAL_S``):

1. Outages appended to ``ticker_tasks:feed:outages`` since the last run (cursor
   :data:`OUTAGE_CURSOR_KEY`) mark the already closed bars they overlap as changed, so a bar
   closed before its outage was reported is closed again with its gap.
2. Minutes in ``ticker_tasks:bars:minutes`` that ended ``TICKER_BARS_CLOSE_GRACE_S`` ago or
   more are taken in order: the watermark ``ticker_tasks:bars:closed_through`` moves to the
   minute and its bars are read in one atomic step, so a tick merged later is *late* and marks
   its bar changed (:mod:`ticker_tasks.bars.live`). Changed (late) bars are taken too, with
   the instrument's next closed bar, whose volume depends on them. At most about
   ``TICKER_BARS_CLOSE_MAX`` bars per run.
3. Each instrument's cumulative volume at the end of each closed minute is recorded in
   :data:`CUM_KEY` (``ticker_tasks:bars:cum:{token}``, sorted set, score = minute, member =
   ``minute:volume``); a bar's volume is its cumulative volume minus the previous closed
   minute's. Gap seconds and quality follow :mod:`ticker_tasks.bars.closing`.
4. The bars are upserted into ``candles`` (:mod:`ticker_tasks.bars.candles`), published as
   one message on :data:`CHANNEL` and :data:`STREAM_KEY`, and only then removed from the
   minutes to close; a changed bar's marker is removed only if it did not change meanwhile.

A crash between steps repeats them on the next run: the upsert is idempotent and a bar may be
published twice (consumers keep the newest message per ``(instrument_token, ts)``).

Closed-bar message (JSON, one per run)::

    {"v": 1, "interval": "minute",
     "columns": {"instrument_token": [...], "ts": [epoch seconds, ...], "open": [...],
                 "high": [...], "low": [...], "close": [...], "volume": [...], "oi": [...],
                 "quality": [...], "gap_seconds": [...]}}
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import redis
from pydantic import ValidationError
from sqlalchemy.orm import Session

from schemas.feed import OUTAGES_STREAM, Outage
from ticker_tasks.bars.candles import INTERVAL, ClosedBar, upsert_stream_bars
from ticker_tasks.bars.closing import BAR_SECONDS, OutageWindows, bar_volume, quality
from ticker_tasks.bars.live import (
    BAR_KEY,
    DIRTY_KEY,
    DIRTY_VERSION_KEY,
    MINUTES_KEY,
    WATERMARK_KEY,
    LiveBar,
    read_bars,
)
from ticker_tasks.market.registry import RegistryCache
from ticker_tasks.metrics import Metrics
from ticker_tasks.pipeline.publish import publish_message
from ticker_tasks.pipeline.state import NO_KEY

log = logging.getLogger(__name__)

STREAM_KEY: Final = "ticker_tasks:bars:stream"
CHANNEL: Final = "ticker_tasks:bars:1m"
OUTAGE_CURSOR_KEY: Final = "ticker_tasks:bars:outages:cursor"
CUM_KEY: Final = "ticker_tasks:bars:cum:{token}"
MESSAGE_VERSION: Final = 1
_OUTAGE_PAGE: Final = 1_000

# KEYS: watermark, bar hash. ARGV: minute.
_TAKE_MINUTE: Final = """
local held = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > held then redis.call('SET', KEYS[1], ARGV[1]) end
return redis.call('HGETALL', KEYS[2])
"""

# KEYS: dirty, dirty version. ARGV: member, version pairs.
_CLEAR: Final = """
local cleared = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[i + 1] then
    redis.call('ZREM', KEYS[1], ARGV[i])
    redis.call('HDEL', KEYS[2], ARGV[i])
    cleared = cleared + 1
  end
end
return cleared
"""


@dataclass(frozen=True)
class CloseOutcome:
    """What one closer run did."""

    closed: int = 0
    late: int = 0
    unmapped: int = 0
    outages: int = 0
    remaining: int = 0


def _member(member: bytes) -> tuple[int, int]:
    minute, token = member.decode().split(":")
    return int(minute), int(token)


class BarCloser:
    """Closes changed bars of finished minutes (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        sessions: Callable[[], Session],
        registry: RegistryCache,
        *,
        grace_s: float,
        max_bars: int,
        ttl_s: int,
        stream_maxlen: int,
    ) -> None:
        self._client = client
        self._sessions = sessions
        self._registry = registry
        self._grace_s = grace_s
        self._max_bars = max_bars
        self._ttl_s = ttl_s
        self._stream_maxlen = stream_maxlen
        self._clear = client.register_script(_CLEAR)
        self._take_minute = client.register_script(_TAKE_MINUTE)

    def run(self, now: float) -> CloseOutcome:
        """Close what is due at ``now`` (epoch seconds).

        Raises:
            redis.RedisError: Redis is unreachable.
            sqlalchemy.exc.SQLAlchemyError: The database failed (nothing is marked closed).
            ticker_tasks.errors.NotFound: No instrument registry is published yet.
        """
        outages = self._mark_outages(now)
        cutoff = now - BAR_SECONDS - self._grace_s
        bars: dict[tuple[int, int], LiveBar] = {}
        minutes = self._take_minutes(cutoff, bars)
        members: Any = self._client.zrangebyscore(
            DIRTY_KEY, "-inf", cutoff, start=0, num=self._max_bars
        )
        versions: Any = self._client.hmget(DIRTY_VERSION_KEY, members) if members else []
        late = read_bars(self._client, [_member(m) for m in members])
        bars.update(late)
        self._record_volumes(list(bars.values()), now)
        bars.update(read_bars(self._client, self._next_closed(list(late.values()))))
        closed, unmapped = self._close(sorted(bars.values(), key=lambda b: (b.minute, b.token)))
        if closed:
            with self._sessions() as session, session.begin():
                upsert_stream_bars(session, closed)
            publish_message(
                self._client,
                stream=STREAM_KEY,
                channel=CHANNEL,
                message=_message(closed),
                maxlen=self._stream_maxlen,
            )
        if minutes:
            self._client.zrem(MINUTES_KEY, *minutes)
        if members:
            args: list[Any] = []
            for member, version in zip(members, versions, strict=True):
                args.extend((member, version if version is not None else b""))
            self._clear(keys=[DIRTY_KEY, DIRTY_VERSION_KEY], args=args)
        metrics = Metrics(self._client)
        metrics.incr("bars_closed", len(closed))
        if unmapped:
            metrics.incr("bars_unmapped", unmapped)
        pipe = self._client.pipeline(transaction=False)
        pipe.zcount(MINUTES_KEY, "-inf", cutoff)
        pipe.zcount(DIRTY_KEY, "-inf", cutoff)
        remaining = sum(int(count) for count in pipe.execute())
        return CloseOutcome(
            closed=len(closed),
            late=len(late),
            unmapped=unmapped,
            outages=outages,
            remaining=remaining,
        )

    def _take_minutes(self, cutoff: float, into: dict[tuple[int, int], LiveBar]) -> list[int]:
        """Read the bars of due minutes, oldest first, moving the watermark to each."""
        due: Any = self._client.zrangebyscore(MINUTES_KEY, "-inf", cutoff)
        taken: list[int] = []
        for raw in due:
            if len(into) >= self._max_bars:
                break
            minute = int(raw)
            held: Any = self._take_minute(
                keys=[WATERMARK_KEY, BAR_KEY.format(minute=minute)], args=[minute]
            )
            for token, value in zip(held[0::2], held[1::2], strict=True):
                into[(minute, int(token))] = LiveBar.parse(minute, int(token), value)
            taken.append(minute)
        return taken

    def _record_volumes(self, bars: list[LiveBar], now: float) -> None:
        """Record each bar's cumulative volume as its instrument's volume at that minute."""
        horizon = f"({int(now) - self._ttl_s}"
        pipe = self._client.pipeline(transaction=False)
        for bar in bars:
            key = CUM_KEY.format(token=bar.token)
            pipe.zremrangebyscore(key, bar.minute, bar.minute)
            pipe.zadd(key, {f"{bar.minute}:{bar.volume_max}": bar.minute})
            pipe.zremrangebyscore(key, "-inf", horizon)
            pipe.expire(key, self._ttl_s)
        pipe.execute()

    def _next_closed(self, bars: list[LiveBar]) -> list[tuple[int, int]]:
        """The next closed minute of each bar's instrument (its volume depends on the bar)."""
        if not bars:
            return []
        pipe = self._client.pipeline(transaction=False)
        for bar in bars:
            pipe.zrangebyscore(
                CUM_KEY.format(token=bar.token), f"({bar.minute}", "+inf", start=0, num=1
            )
        out: list[tuple[int, int]] = []
        for bar, found in zip(bars, pipe.execute(), strict=True):
            if found:
                out.append((int(found[0].decode().split(":")[0]), bar.token))
        return out

    def _close(self, bars: list[LiveBar]) -> tuple[list[ClosedBar], int]:
        if not bars:
            return [], 0
        previous = self._previous_volumes(bars)
        windows = OutageWindows.from_outages(self._outages_since(min(b.minute for b in bars)))
        table = self._registry.current()
        tokens = np.array([b.token for b in bars], dtype=np.int64)
        rows = table.rows_for_tokens(tokens)
        known = rows >= 0
        ids = table.column("instrument_id", np.where(known, rows, 0))
        closed: list[ClosedBar] = []
        for bar, is_known, instrument_id in zip(bars, known.tolist(), ids.tolist(), strict=True):
            if not is_known:
                continue
            gap = windows.gap_seconds(bar.token, bar.minute)
            closed.append(
                ClosedBar(
                    instrument_id=int(instrument_id),
                    instrument_token=bar.token,
                    minute=bar.minute,
                    open=bar.open,
                    high=bar.high,
                    low=bar.low,
                    close=bar.close,
                    volume=bar_volume(
                        bar.volume_max, bar.volume_min, bar.minute, previous.get(bar)
                    ),
                    oi=bar.oi if bar.oi_key != NO_KEY else None,
                    quality=quality(bar.sources, gap),
                    gap_seconds=gap,
                )
            )
        return closed, len(bars) - len(closed)

    def _previous_volumes(self, bars: list[LiveBar]) -> dict[LiveBar, tuple[int, int]]:
        """Per bar: ``(minute, volume_max)`` of the instrument's latest earlier minute."""
        pipe = self._client.pipeline(transaction=False)
        for bar in bars:
            pipe.zrevrangebyscore(
                CUM_KEY.format(token=bar.token), f"({bar.minute}", "-inf", start=0, num=1
            )
        out: dict[LiveBar, tuple[int, int]] = {}
        for bar, found in zip(bars, pipe.execute(), strict=True):
            if found:
                minute, volume = found[0].decode().split(":")
                out[bar] = (int(minute), int(volume))
        return out

    def _outages_since(self, minute: int) -> list[Outage]:
        """Outages that ended at or after ``minute`` (entry ids are their append times)."""
        entries: Any = self._client.xrange(OUTAGES_STREAM, f"{minute * 1000}-0", "+")
        return [outage for _, fields in entries if (outage := _outage(fields)) is not None]

    def _mark_outages(self, now: float) -> int:
        """Mark the bars overlapped by outages reported since the last run; returns outages."""
        cursor_raw: Any = self._client.get(OUTAGE_CURSOR_KEY)
        horizon = int(now - self._ttl_s)
        cursor = cursor_raw.decode() if cursor_raw else f"{max(horizon, 0) * 1000}-0"
        entries: Any = self._client.xrange(OUTAGES_STREAM, f"({cursor}", "+", count=_OUTAGE_PAGE)
        if not entries:
            return 0
        for _, fields in entries:
            outage = _outage(fields)
            if outage is not None and outage.tokens:
                self._mark_outage(outage, horizon)
        self._client.set(OUTAGE_CURSOR_KEY, entries[-1][0])
        return len(entries)

    def _mark_outage(self, outage: Outage, horizon: int) -> None:
        first = max(int(outage.start // BAR_SECONDS) * BAR_SECONDS, horizon)
        minutes = range(first, int(outage.end) + 1, BAR_SECONDS)
        pipe = self._client.pipeline(transaction=False)
        for minute in minutes:
            pipe.hmget(BAR_KEY.format(minute=minute), outage.tokens)
        found = pipe.execute()
        for minute, values in zip(minutes, found, strict=True):
            for token, value in zip(outage.tokens, values, strict=True):
                if value is not None:
                    member = f"{minute}:{token}"
                    pipe.zadd(DIRTY_KEY, {member: minute})
                    pipe.hincrby(DIRTY_VERSION_KEY, member, 1)
        pipe.execute()


def _outage(fields: dict[bytes, bytes]) -> Outage | None:
    try:
        return Outage.from_fields(fields)
    except ValidationError as exc:
        log.warning("skipping a malformed outage entry: %s", exc.errors()[0].get("msg"))
        return None


def _message(bars: list[ClosedBar]) -> dict[str, Any]:
    return {
        "v": MESSAGE_VERSION,
        "interval": INTERVAL,
        "columns": {
            "instrument_token": [b.instrument_token for b in bars],
            "ts": [b.minute for b in bars],
            "open": [b.open for b in bars],
            "high": [b.high for b in bars],
            "low": [b.low for b in bars],
            "close": [b.close for b in bars],
            "volume": [b.volume for b in bars],
            "oi": [b.oi for b in bars],
            "quality": [b.quality for b in bars],
            "gap_seconds": [b.gap_seconds for b in bars],
        },
    }
