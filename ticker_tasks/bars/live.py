"""Open 1-minute bars in Redis, merged from partial bars in one Lua round trip per batch.

Keys (a single Redis instance: the script touches keys derived from its arguments):

- :data:`BAR_KEY` ``ticker_tasks:bars:1m:{minute}`` (hash, field = instrument token, value =
  ``open_key|open|close_key|close|high|low|volume_max|volume_min|oi_key|oi|sources``), expiring
  ``TICKER_BARS_REDIS_TTL_S`` after its first bar;
- :data:`CUM_KEY` ``ticker_tasks:bars:cum:{token}`` (sorted set, score = minute, member =
  ``minute:volume_max``): the cumulative volume at the end of each recent minute, from which a
  closed bar's volume is derived;
- :data:`DIRTY_KEY` ``ticker_tasks:bars:dirty`` (sorted set, score = minute, member =
  ``minute:token``) and :data:`DIRTY_VERSION_KEY` ``ticker_tasks:bars:dirty:version`` (hash,
  same member -> change counter): bars changed since they were last closed. The closer removes
  a member only if its counter did not move while it was closing it.

A merge that changes nothing (a redelivered batch) writes nothing and marks nothing. When a
minute's cumulative volume grows, the instrument's next recorded minute is marked too: its
volume depends on it. Prices are kept as the strings the worker sent (``repr`` of the float),
compared numerically, so no precision is lost in Lua.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import redis

from ticker_tasks.bars.aggregate import SOURCE_BITS, PartialBars

BAR_KEY: Final = "ticker_tasks:bars:1m:{minute}"
CUM_KEY: Final = "ticker_tasks:bars:cum:{token}"
DIRTY_KEY: Final = "ticker_tasks:bars:dirty"
DIRTY_VERSION_KEY: Final = "ticker_tasks:bars:dirty:version"
_CUM_PREFIX: Final = CUM_KEY.removesuffix("{token}")
_PER_BAR: Final = 13

# KEYS: dirty, dirty version, bar hash 1..k. ARGV: ttl, source bit, cum prefix, then 13 per
# bar: key slot, minute, token, open_key, open, close_key, close, high, low, vmax, vmin,
# oi_key, oi.
_MERGE: Final = """
local ttl = tonumber(ARGV[1])
local src = tonumber(ARGV[2])
local cum_prefix = ARGV[3]
local changed = 0
local function split(s)
  local t = {}
  for f in string.gmatch(s .. '|', '([^|]*)|') do t[#t + 1] = f end
  return t
end
local function mark(minute, token)
  local member = minute .. ':' .. token
  redis.call('ZADD', KEYS[1], minute, member)
  redis.call('HINCRBY', KEYS[2], member, 1)
end
for i = 4, #ARGV, 13 do
  local hkey = KEYS[tonumber(ARGV[i])]
  local minute, token = ARGV[i + 1], ARGV[i + 2]
  local new = {ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], ARGV[i + 7], ARGV[i + 8],
               ARGV[i + 9], ARGV[i + 10], ARGV[i + 11], ARGV[i + 12], tostring(src)}
  local cur = redis.call('HGET', hkey, token)
  local old_vmax = -1
  if cur then
    local t = split(cur)
    old_vmax = tonumber(t[7])
    if t[1] < new[1] then new[1] = t[1]; new[2] = t[2] end
    if t[3] > new[3] then new[3] = t[3]; new[4] = t[4] end
    if tonumber(t[5]) > tonumber(new[5]) then new[5] = t[5] end
    if tonumber(t[6]) < tonumber(new[6]) then new[6] = t[6] end
    if tonumber(t[7]) > tonumber(new[7]) then new[7] = t[7] end
    local held, got = tonumber(t[8]), tonumber(new[8])
    if got == 0 or (held > 0 and held < got) then new[8] = t[8] end
    if t[9] > new[9] then new[9] = t[9]; new[10] = t[10] end
    new[11] = tostring(bit.bor(tonumber(t[11]), src))
  end
  local value = table.concat(new, '|')
  if value ~= cur then
    redis.call('HSET', hkey, token, value)
    if not cur then redis.call('EXPIRE', hkey, ttl, 'NX') end
    mark(minute, token)
    changed = changed + 1
    if tonumber(new[7]) > old_vmax then
      local cum = cum_prefix .. token
      redis.call('ZREMRANGEBYSCORE', cum, minute, minute)
      redis.call('ZADD', cum, minute, minute .. ':' .. new[7])
      redis.call('ZREMRANGEBYSCORE', cum, '-inf', '(' .. (tonumber(minute) - ttl))
      redis.call('EXPIRE', cum, ttl)
      local nxt = redis.call('ZRANGEBYSCORE', cum, '(' .. minute, '+inf', 'LIMIT', 0, 1)
      if #nxt > 0 then mark(string.match(nxt[1], '^(%d+):'), token) end
    end
  end
end
return changed
"""


@dataclass(frozen=True)
class LiveBar:
    """A bar as held in Redis (see the module docstring for the field meanings)."""

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
    def parse(cls, minute: int, token: int, value: bytes | str) -> LiveBar:
        """Parse a stored value.

        Raises:
            ValueError: The value is not a bar record.
        """
        text = value.decode() if isinstance(value, bytes) else value
        parts = text.split("|")
        if len(parts) != 11:
            raise ValueError(f"not a bar record: {text[:80]!r}")
        return cls(
            minute=minute,
            token=token,
            open_key=parts[0],
            open=float(parts[1]),
            close_key=parts[2],
            close=float(parts[3]),
            high=float(parts[4]),
            low=float(parts[5]),
            volume_max=int(parts[6]),
            volume_min=int(parts[7]),
            oi_key=parts[8],
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
        keys = [DIRTY_KEY, DIRTY_VERSION_KEY]
        keys.extend(BAR_KEY.format(minute=int(m)) for m in minutes.tolist())
        per_bar = np.empty((len(bars), _PER_BAR), dtype=object)
        per_bar[:, 0] = (slot.reshape(-1) + 3).tolist()
        per_bar[:, 1] = bars.minute.tolist()
        per_bar[:, 2] = bars.token.tolist()
        per_bar[:, 3] = bars.open_key
        per_bar[:, 4] = [repr(v) for v in bars.open.tolist()]
        per_bar[:, 5] = bars.close_key
        per_bar[:, 6] = [repr(v) for v in bars.close.tolist()]
        per_bar[:, 7] = [repr(v) for v in bars.high.tolist()]
        per_bar[:, 8] = [repr(v) for v in bars.low.tolist()]
        per_bar[:, 9] = bars.volume_max.tolist()
        per_bar[:, 10] = bars.volume_min.tolist()
        per_bar[:, 11] = bars.oi_key
        per_bar[:, 12] = bars.oi.tolist()
        args: list[Any] = [self._ttl_s, SOURCE_BITS[source], _CUM_PREFIX]
        args.extend(per_bar.reshape(-1).tolist())
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
