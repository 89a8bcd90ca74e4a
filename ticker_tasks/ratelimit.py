"""The one rate limiter of the service: global, in Redis, atomic, on Redis's clock.

Every process on every machine that calls Kite for an api_key draws its slots from the same
Redis keys, so the broker sees one paced stream of requests no matter how many Celery workers
run. One Lua script reserves a slot atomically, reading the clock with Redis ``TIME`` (so the
hosts' clocks never matter), and the caller then sleeps until its slot.

A limiter key carries several :class:`Rule` objects, each checked on every reservation:

* a **paced** rule (``Rule.per_second(10)``) spaces slots evenly, ``period_s / limit`` apart
  with no burst (GCRA / virtual scheduling with zero tolerance). Evenly spaced slots are what
  keeps the broker's sliding one-second window below its limit: with ``limit x headroom``
  slots per second, ``limit + 1`` arrivals inside any 1.0 s would need an arrival jitter above
  ``1 / headroom - 1`` seconds (111 ms at the default headroom of 0.9).
* a **window** rule (``Rule.window(360, 60)``) keeps a sliding log of reserved slots (one
  sorted set per period) and admits a slot only while fewer than ``limit`` slots lie in the
  ``period_s`` before it.

Slots of one key are handed out in non-decreasing order, so a reservation never lands inside
a window already counted. When the next free slot is further away than ``max_wait``, nothing
is reserved and :class:`~ticker_tasks.errors.RateLimited` carries ``retry_after``: a Celery task
calls ``self.retry(countdown=exc.retry_after)`` instead of sleeping in the worker.

Redis keys (all with a TTL: an idle key disappears once no reservation can matter any more)::

    ticker_tasks:ratelimit:{api_key}:{bucket}            hash: last reserved slot, sequence
    ticker_tasks:ratelimit:{api_key}:{bucket}:{period}s  sorted set: slots of one window rule
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis

from ticker_tasks.errors import RateLimited, ServiceUnavailable

KEY_PREFIX = "ticker_tasks:ratelimit"
_MICROS = 1_000_000

# KEYS[1]: state hash; KEYS[2..]: one sorted set per window rule.
# ARGV[1]: pacing interval (us, 0 = none); ARGV[2]: max wait (us); ARGV[3]: TTL margin (ms);
# then one (limit, period_us) pair per window rule, in the order of KEYS[2..].
# Returns {granted (0/1), slot_us, now_us}.
_RESERVE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval = tonumber(ARGV[1])
local max_wait = tonumber(ARGV[2])
local margin = tonumber(ARGV[3])
local slot = now
local raw = redis.call('HGET', KEYS[1], 'last')
if raw then
  local last = tonumber(raw)
  if last + interval > slot then slot = last + interval end
end
for i = 2, #KEYS do
  local limit = tonumber(ARGV[2 + 2 * (i - 1)])
  local period = tonumber(ARGV[3 + 2 * (i - 1)])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - period)
  local nth = redis.call('ZREVRANGE', KEYS[i], limit - 1, limit - 1, 'WITHSCORES')
  if nth[2] then
    local earliest = tonumber(nth[2]) + period
    if earliest > slot then slot = earliest end
  end
end
if slot - now > max_wait then
  return {0, slot, now}
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local exact = string.format('%.0f', slot)
redis.call('HSET', KEYS[1], 'last', exact)
redis.call('PEXPIRE', KEYS[1], math.ceil((slot - now + interval) / 1000) + margin)
for i = 2, #KEYS do
  local period = tonumber(ARGV[3 + 2 * (i - 1)])
  redis.call('ZADD', KEYS[i], exact, exact .. ':' .. seq)
  redis.call('PEXPIRE', KEYS[i], math.ceil((slot - now + period) / 1000) + margin)
end
return {1, slot, now}
"""


@dataclass(frozen=True)
class Rule:
    """One limit of a key: at most ``limit`` requests per ``period_s`` seconds.

    Attributes:
        limit: Requests allowed per period (a window rule uses ``floor(limit)``, at least 1).
        period_s: Length of the period in seconds.
        paced: Space slots evenly (``period_s / limit`` apart, no burst) instead of counting
            them in a sliding window.
    """

    limit: float
    period_s: float
    paced: bool = False

    def __post_init__(self) -> None:
        if not (self.limit > 0 and self.period_s > 0):
            raise ValueError(f"a rule needs a positive limit and period: {self}")

    @classmethod
    def per_second(cls, rate: float) -> Rule:
        """A paced rule: ``rate`` evenly spaced slots per second."""
        return cls(limit=rate, period_s=1.0, paced=True)

    @classmethod
    def window(cls, limit: int, period_s: float) -> Rule:
        """A sliding-window rule: at most ``limit`` slots in any ``period_s`` seconds."""
        return cls(limit=limit, period_s=period_s, paced=False)

    def scaled(self, factor: float) -> Rule:
        """This rule with its limit multiplied by ``factor`` (the headroom under the broker)."""
        return Rule(limit=self.limit * factor, period_s=self.period_s, paced=self.paced)

    @property
    def interval_s(self) -> float:
        """Spacing between two slots of a paced rule."""
        return self.period_s / self.limit

    @property
    def count(self) -> int:
        """Slots a window rule admits per period."""
        return max(1, math.floor(self.limit))


@dataclass(frozen=True)
class Reservation:
    """The answer of one reservation attempt, on Redis's clock (epoch seconds)."""

    granted: bool
    slot_at: float
    now: float

    @property
    def wait(self) -> float:
        """Seconds from the reservation until the slot."""
        return max(0.0, self.slot_at - self.now)


def rate_key(api_key: str, bucket: str) -> str:
    """The limiter key of one api_key and route class (``general``, ``quote``, ...)."""
    return f"{api_key}:{bucket}"


class RateLimiter:
    """Global rate limiter shared by every process through Redis.

    Args:
        redis_client: The Redis holding the limiter state (its socket timeout bounds every call).
        key_prefix: Namespace of the keys.
        ttl_margin_s: Extra lifetime of a key beyond the last moment it can matter.
        sleep: How :meth:`acquire` waits for its slot (replaceable in tests).
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        *,
        key_prefix: str = KEY_PREFIX,
        ttl_margin_s: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._redis = redis_client
        self._prefix = key_prefix
        self._margin_ms = math.ceil(ttl_margin_s * 1000)
        self._sleep = sleep
        self._script = redis_client.register_script(_RESERVE)

    def redis_keys(self, key: str, rules: Sequence[Rule]) -> list[str]:
        """The Redis keys behind ``key``: the state hash, then one sorted set per window."""
        base = f"{self._prefix}:{key}"
        return [base, *(f"{base}:{period:g}s" for period in _window_periods(rules))]

    def reserve(self, key: str, rules: Sequence[Rule], *, max_wait: float) -> Reservation:
        """Reserve the next free slot of ``key`` unless it is more than ``max_wait`` away.

        Args:
            key: Logical key, e.g. ``rate_key(api_key, "orders")``.
            rules: Every rule the slot must satisfy (at least one).
            max_wait: Longest acceptable wait in seconds; 0 reserves only a slot free now.

        Returns:
            The reservation; ``granted`` is False (and nothing was reserved) when the slot is
            too far away.

        Raises:
            ServiceUnavailable: Redis could not be reached in time.
        """
        if not rules:
            raise ValueError("a rate-limit key needs at least one rule")
        if max_wait < 0:
            raise ValueError(f"max_wait must not be negative: {max_wait}")
        interval = max((rule.interval_s for rule in rules if rule.paced), default=0.0)
        args: list[int] = [_us(interval), _us(max_wait), self._margin_ms]
        for period in _window_periods(rules):
            count = min(rule.count for rule in rules if _is_window(rule, period))
            args += [count, _us(period)]
        try:
            granted, slot_us, now_us = self._script(
                keys=self.redis_keys(key, rules), args=args, client=self._redis
            )
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise ServiceUnavailable(f"rate limiter: Redis unreachable: {exc}") from exc
        return Reservation(
            granted=bool(granted), slot_at=int(slot_us) / _MICROS, now=int(now_us) / _MICROS
        )

    def acquire(self, key: str, rules: Sequence[Rule], *, max_wait: float) -> float:
        """Reserve the next slot of ``key`` and sleep until it.

        Args:
            key: Logical key, e.g. ``rate_key(api_key, "quote")``.
            rules: Every rule the slot must satisfy.
            max_wait: Longest wait in seconds (``Settings.rate_limit_max_wait_s``).

        Returns:
            The seconds slept.

        Raises:
            RateLimited: The next slot is more than ``max_wait`` away; nothing was reserved and
                ``retry_after`` says when it frees up.
            ServiceUnavailable: Redis could not be reached in time.
        """
        reservation = self.reserve(key, rules, max_wait=max_wait)
        if not reservation.granted:
            raise RateLimited(
                f"rate limit of {key!r}: next slot in {reservation.wait:.3f}s "
                f"(max wait {max_wait:.3f}s)",
                retry_after=reservation.wait,
            )
        if reservation.wait > 0:
            self._sleep(reservation.wait)
        return reservation.wait

    def try_acquire(self, key: str, rules: Sequence[Rule]) -> bool:
        """Take a slot of ``key`` only if one is free right now; never waits."""
        return self.reserve(key, rules, max_wait=0.0).granted


def _is_window(rule: Rule, period: float) -> bool:
    return not rule.paced and rule.period_s == period


def _window_periods(rules: Sequence[Rule]) -> list[float]:
    return sorted({rule.period_s for rule in rules if not rule.paced})


def _us(seconds: float) -> int:
    return math.ceil(seconds * _MICROS)
