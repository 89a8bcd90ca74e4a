"""The bar closer: turns changed bars of finished minutes into ``candles`` rows and messages.

One run (the beat task ``ticker_tasks.bars.close``, every ``TICKER_BARS_CLOSE_INTERVAL_S``):

1. Outages appended to ``ticker_tasks:feed:outages`` since the last run (cursor
   :data:`OUTAGE_CURSOR_KEY`) mark the bars they overlap as changed, so a bar closed before
   its outage was reported is closed again with its gap.
2. Changed bars whose minute ended ``TICKER_BARS_CLOSE_GRACE_S`` ago or more (at most
   ``TICKER_BARS_CLOSE_MAX``) are read with their instrument's previous cumulative volume and
   the outages overlapping them, and closed: volume, gap seconds and quality
   (:mod:`ticker_tasks.bars.closing`).
3. They are upserted into ``candles`` (:mod:`ticker_tasks.bars.candles`), then published as
   one message on :data:`CHANNEL` and :data:`STREAM_KEY`.
4. Each bar's change marker is removed only if the bar did not change meanwhile.

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
    CUM_KEY,
    DIRTY_KEY,
    DIRTY_VERSION_KEY,
    LiveBar,
    read_bars,
)
from ticker_tasks.market.registry import RegistryCache
from ticker_tasks.metrics import Metrics
from ticker_tasks.pipeline.publish import publish_message

log = logging.getLogger(__name__)

STREAM_KEY: Final = "ticker_tasks:bars:stream"
CHANNEL: Final = "ticker_tasks:bars:1m"
OUTAGE_CURSOR_KEY: Final = "ticker_tasks:bars:outages:cursor"
MESSAGE_VERSION: Final = 1
_OUTAGE_PAGE: Final = 1_000

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

    def run(self, now: float) -> CloseOutcome:
        """Close what is due at ``now`` (epoch seconds).

        Raises:
            redis.RedisError: Redis is unreachable.
            sqlalchemy.exc.SQLAlchemyError: The database failed (nothing is marked closed).
            ticker_tasks.errors.NotFound: No instrument registry is published yet.
        """
        outages = self._mark_outages(now)
        cutoff = now - BAR_SECONDS - self._grace_s
        members: Any = self._client.zrangebyscore(
            DIRTY_KEY, "-inf", cutoff, start=0, num=self._max_bars
        )
        if not members:
            return CloseOutcome(outages=outages)
        versions: Any = self._client.hmget(DIRTY_VERSION_KEY, members)
        pairs = [_member(m) for m in members]
        bars = read_bars(self._client, pairs)
        closed, unmapped = self._close(list(bars.values()))
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
        args: list[Any] = []
        for member, version in zip(members, versions, strict=True):
            args.extend((member, version if version is not None else b""))
        self._clear(keys=[DIRTY_KEY, DIRTY_VERSION_KEY], args=args)
        metrics = Metrics(self._client)
        metrics.incr("bars_closed", len(closed))
        if unmapped:
            metrics.incr("bars_unmapped", unmapped)
        remaining = int(self._client.zcount(DIRTY_KEY, "-inf", cutoff))
        return CloseOutcome(
            closed=len(closed), unmapped=unmapped, outages=outages, remaining=remaining
        )

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
                    oi=bar.oi if bar.oi_key else None,
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
