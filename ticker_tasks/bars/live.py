"""Open 1-minute bars in Redis, merged from partial bars in one Lua round trip per batch.

Keys (a single Redis instance):

- :data:`BAR_KEY` ``ticker_tasks:bars:1m:{minute}`` (hash, field = instrument token, value =
  msgpack array ``[open_key, open, close_key, close, high, low, volume_max, volume_min,
  oi_key, oi, sources]``), expiring ``TICKER_BARS_REDIS_TTL_S`` after its first bar;
- :data:`MINUTES_KEY` ``ticker_tasks:bars:minutes`` (sorted set, score = member = minute):
  minutes with bars not closed yet;
- :data:`WATERMARK_KEY` ``ticker_tasks:bars:closed_through``: the newest minute the closer has
  started closing. A merge into a minute at or before it is *late*: the bar is marked in
  :data:`DIRTY_KEY` ``ticker_tasks:bars:dirty`` (sorted set, score = minute, member =
  ``minute:token``) with a change counter in :data:`DIRTY_VERSION_KEY`
  ``ticker_tasks:bars:dirty:version``, and the closer closes it again.

The payload travels as one msgpack blob (prices as IEEE doubles, exact); the merged record
is packed with Redis' ``cmsgpack``. A merge that changes nothing (a redelivered batch) writes
nothing and marks nothing. Every field is a min or max over a total order, so the result is
the same whatever the order or number of merges.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import msgpack  # type: ignore[import-untyped]
import numpy as np
import redis

from ticker_tasks.bars.aggregate import SOURCE_BITS, PartialBars
from ticker_tasks.pipeline.state import KEY_BYTES

BAR_KEY: Final = "ticker_tasks:bars:1m:{minute}"
MINUTES_KEY: Final = "ticker_tasks:bars:minutes"
WATERMARK_KEY: Final = "ticker_tasks:bars:closed_through"
DIRTY_KEY: Final = "ticker_tasks:bars:dirty"
DIRTY_VERSION_KEY: Final = "ticker_tasks:bars:dirty:version"

# KEYS: minutes, dirty, dirty version, watermark, bar hash 1..k.
# ARGV: ttl, source bit, key size, payload (msgpack: slot, token, open keys, open, close keys,
#       close, high, low, vmax, vmin, oi keys, oi; one array each, keys as concatenated
#       blobs), minute 1..k.
_MERGE: Final = """
local ttl = tonumber(ARGV[1])
local src = tonumber(ARGV[2])
local ks = tonumber(ARGV[3])
local p = cmsgpack.unpack(ARGV[4])
local watermark = tonumber(redis.call('GET', KEYS[4]) or '0')
local slots, tokens = p[1], p[2]
local by_slot = {}
for i = 1, #tokens do
  local group = by_slot[slots[i]]
  if not group then group = {}; by_slot[slots[i]] = group end
  group[#group + 1] = i
end
local changed = 0
for slot, rows in pairs(by_slot) do
  local hkey = KEYS[4 + slot]
  local minute = ARGV[4 + slot]
  local late = tonumber(minute) <= watermark
  for first = 1, #rows, 500 do
    local last = math.min(first + 499, #rows)
    local fields = {}
    for k = first, last do fields[#fields + 1] = tokens[rows[k]] end
    local held = redis.call('HMGET', hkey, unpack(fields))
    local out = {}
    for k = first, last do
      local i = rows[k]
      local first_byte, last_byte = (i - 1) * ks + 1, i * ks
      local b = {string.sub(p[3], first_byte, last_byte), p[4][i],
                 string.sub(p[5], first_byte, last_byte), p[6][i], p[7][i], p[8][i], p[9][i],
                 p[10][i], string.sub(p[11], first_byte, last_byte), p[12][i], src}
      local cur = held[k - first + 1]
      if cur then
        local t = cmsgpack.unpack(cur)
        if t[1] < b[1] then b[1] = t[1]; b[2] = t[2] end
        if t[3] > b[3] then b[3] = t[3]; b[4] = t[4] end
        if t[5] > b[5] then b[5] = t[5] end
        if t[6] < b[6] then b[6] = t[6] end
        if t[7] > b[7] then b[7] = t[7] end
        if b[8] == 0 or (t[8] > 0 and t[8] < b[8]) then b[8] = t[8] end
        if t[9] > b[9] then b[9] = t[9]; b[10] = t[10] end
        b[11] = bit.bor(t[11], src)
      end
      local value = cmsgpack.pack(b)
      if value ~= cur then
        local token = fields[k - first + 1]
        out[#out + 1] = token
        out[#out + 1] = value
        changed = changed + 1
        if late then
          local member = minute .. ':' .. string.format('%d', token)
          redis.call('ZADD', KEYS[2], minute, member)
          redis.call('HINCRBY', KEYS[3], member, 1)
        end
      end
    end
    if #out > 0 then
      redis.call('HSET', hkey, unpack(out))
      redis.call('EXPIRE', hkey, ttl, 'NX')
      if not late then redis.call('ZADD', KEYS[1], minute, minute) end
    end
  end
end
return changed
"""


@dataclass(frozen=True)
class LiveBar:
    """A bar as held in Redis (see :mod:`ticker_tasks.bars.aggregate` for the fields)."""

    minute: int
    token: int
    open_key: str
    open: float
    close_key: str
    close: float
    high: float
    low: float
    volume_max: int
    volume_min: int
    oi_key: str
    oi: int
    sources: int

    @classmethod
    def parse(cls, minute: int, token: int, value: bytes) -> LiveBar:
        """Parse a stored value.

        Raises:
            ValueError: The value is not a bar record.
        """
        try:
            parts = msgpack.unpackb(value, raw=False)
        except (msgpack.UnpackException, ValueError) as exc:
            raise ValueError(f"not a bar record: {value[:40]!r}") from exc
        if not isinstance(parts, list) or len(parts) != 11:
            raise ValueError(f"not a bar record: {value[:40]!r}")
        return cls(
            minute=minute,
            token=token,
            open_key=str(parts[0]),
            open=float(parts[1]),
            close_key=str(parts[2]),
            close=float(parts[3]),
            high=float(parts[4]),
            low=float(parts[5]),
            volume_max=int(parts[6]),
            volume_min=int(parts[7]),
            oi_key=str(parts[8]),
            oi=int(parts[9]),
            sources=int(parts[10]),
        )


class BarMerger:
    """Merges partial bars into the open bars in Redis (one script call per batch)."""

    def __init__(self, client: redis.Redis, *, ttl_s: int) -> None:
        self._ttl_s = ttl_s
        self._script = client.register_script(_MERGE)

    def merge(self, bars: PartialBars, *, source: str) -> int:
        """Merge ``bars`` (all from one batch of ``source``); returns the bars changed.

        Raises:
            redis.RedisError: Redis is unreachable (the script is atomic: all or nothing).
        """
        if len(bars) == 0:
            return 0
        minutes, slot = np.unique(bars.minute, return_inverse=True)
        payload = msgpack.packb(
            [
                (slot.reshape(-1) + 1).tolist(),
                bars.token.tolist(),
                np.ascontiguousarray(bars.open_key).tobytes(),
                bars.open.tolist(),
                np.ascontiguousarray(bars.close_key).tobytes(),
                bars.close.tolist(),
                bars.high.tolist(),
                bars.low.tolist(),
                bars.volume_max.tolist(),
                bars.volume_min.tolist(),
                np.ascontiguousarray(bars.oi_key).tobytes(),
                bars.oi.tolist(),
            ],
            use_bin_type=False,  # Redis' cmsgpack reads raw strings, not the bin type
        )
        minute_list = [int(m) for m in minutes.tolist()]
        keys = [MINUTES_KEY, DIRTY_KEY, DIRTY_VERSION_KEY, WATERMARK_KEY]
        keys.extend(BAR_KEY.format(minute=m) for m in minute_list)
        args: list[Any] = [self._ttl_s, SOURCE_BITS[source], KEY_BYTES, payload, *minute_list]
        return int(self._script(keys=keys, args=args))


def read_bars(
    client: redis.Redis, members: Iterable[tuple[int, int]]
) -> dict[tuple[int, int], LiveBar]:
    """The bars of ``(minute, token)`` pairs still in Redis (one pipelined round trip)."""
    by_minute: dict[int, list[int]] = {}
    for minute, token in members:
        by_minute.setdefault(minute, []).append(token)
    pipe = client.pipeline(transaction=False)
    for minute, tokens in by_minute.items():
        pipe.hmget(BAR_KEY.format(minute=minute), tokens)
    out: dict[tuple[int, int], LiveBar] = {}
    for (minute, tokens), values in zip(by_minute.items(), pipe.execute(), strict=True):
        for token, value in zip(tokens, values, strict=True):
            if value is not None:
                out[(minute, token)] = LiveBar.parse(minute, token, value)
    return out
