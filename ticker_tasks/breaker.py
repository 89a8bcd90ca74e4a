"""The one circuit breaker: per account, shared by every process through Redis.

States of an account's circuit (hash ``ticker_tasks:breaker:{account_id}``)::

    closed     calls pass; each retryable failure adds one to ``failures``, a success
               clears the count; ``breaker_failure_threshold`` consecutive failures -> open
    open       calls are refused with CircuitOpen(retry_after) until ``breaker_reset_s``
               has passed -> the next check turns the circuit half-open
    half_open  exactly one call (the probe) is let through; the others are refused until the
               probe's lease (``breaker_reset_s``) runs out, when the next check becomes the
               new probe. The probe's success closes the circuit, its failure opens it again.

Every transition is one Lua script reading the clock with Redis ``TIME``, so concurrent
workers on any host agree. A missing key is a closed circuit with no failures; each key
expires ``2 x breaker_reset_s + 60 s`` after its last change, so failures far apart are not
"consecutive" and nothing leaks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import redis
from redis.commands.core import Script

from ticker_tasks.errors import CircuitOpen, ServiceUnavailable
from ticker_tasks.settings import Settings

KEY_PREFIX = "ticker_tasks:breaker"
_MICROS = 1_000_000

_CLOCK = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
"""

# ARGV[1]: reset (us); ARGV[2]: TTL (ms). Returns {allowed (0/1), wait_us, probe (0/1)}.
_CHECK = (
    _CLOCK
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if (not state) or state == 'closed' then return {1, 0, 0} end
local deadline = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if now < deadline then return {0, deadline - now, 0} end
redis.call('HSET', KEYS[1], 'state', 'half_open',
           'until', string.format('%.0f', now + tonumber(ARGV[1])))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, 0, 1}
"""
)

# ARGV[1]: threshold; ARGV[2]: reset (us); ARGV[3]: TTL (ms). Returns the state after.
_FAILURE = (
    _CLOCK
    + """
local state = redis.call('HGET', KEYS[1], 'state')
local reopen = string.format('%.0f', now + tonumber(ARGV[2]))
if state == 'open' then return 'open' end
if state == 'half_open' then
  redis.call('HSET', KEYS[1], 'state', 'open', 'until', reopen)
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 'open'
end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
if failures >= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'until', reopen)
  state = 'open'
else
  redis.call('HSET', KEYS[1], 'state', 'closed')
  state = 'closed'
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return state
"""
)

# Give the probe lease back (the probe never reached the broker). Returns 1 if released.
_CANCEL_PROBE = """
if redis.call('HGET', KEYS[1], 'state') == 'half_open' then
  redis.call('HSET', KEYS[1], 'until', '0')
  return 1
end
return 0
"""

# ARGV: none. Returns {state, failures, wait_us}.
_STATUS = (
    _CLOCK
    + """
local fields = redis.call('HMGET', KEYS[1], 'state', 'failures', 'until')
local deadline = tonumber(fields[3] or '0')
local wait = 0
if deadline > now then wait = deadline - now end
return {fields[1] or 'closed', tonumber(fields[2] or '0'), wait}
"""
)


@dataclass(frozen=True)
class BreakerStatus:
    """A snapshot of one account's circuit."""

    state: str
    failures: int
    retry_after: float


class CircuitBreaker:
    """Per-account circuit breaker shared through Redis.

    Args:
        redis_client: The Redis holding the breaker state.
        settings: Supplies ``breaker_failure_threshold`` and ``breaker_reset_s``.
        key_prefix: Namespace of the keys.
    """

    def __init__(
        self, redis_client: redis.Redis, settings: Settings, *, key_prefix: str = KEY_PREFIX
    ) -> None:
        self._redis = redis_client
        self._prefix = key_prefix
        self._threshold = settings.breaker_failure_threshold
        self._reset_us = math.ceil(settings.breaker_reset_s * _MICROS)
        self._ttl_ms = math.ceil(2 * settings.breaker_reset_s * 1000) + 60_000
        self._check = redis_client.register_script(_CHECK)
        self._failure = redis_client.register_script(_FAILURE)
        self._cancel_probe = redis_client.register_script(_CANCEL_PROBE)
        self._status = redis_client.register_script(_STATUS)

    def key(self, account_id: str) -> str:
        """The Redis key of an account's circuit."""
        return f"{self._prefix}:{account_id}"

    def check(self, account_id: str) -> bool:
        """Let a call through, or refuse it while the circuit is open.

        Returns:
            True when this call is the half-open probe: record its outcome, or give the lease
            back with :meth:`cancel_probe` if the call is not made after all.

        Raises:
            CircuitOpen: The circuit is open (or another probe is in flight); ``retry_after``
                is the time until the next probe may go.
            ServiceUnavailable: Redis could not be reached in time.
        """
        allowed, wait_us, probe = self._run(self._check, account_id, self._reset_us, self._ttl_ms)
        if not allowed:
            raise CircuitOpen(
                f"circuit of account {account_id!r} is open",
                retry_after=int(wait_us) / _MICROS,
            )
        return bool(probe)

    def record_success(self, account_id: str) -> None:
        """The broker answered: close the circuit and forget the failures."""
        try:
            self._redis.delete(self.key(account_id))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise ServiceUnavailable(f"circuit breaker: Redis unreachable: {exc}") from exc

    def record_failure(self, account_id: str) -> str:
        """Count a retryable failure; returns the state after it (``closed`` or ``open``)."""
        state = self._run(self._failure, account_id, self._threshold, self._reset_us, self._ttl_ms)
        return _text(state)

    def cancel_probe(self, account_id: str) -> None:
        """Give back a probe lease granted by :meth:`check` when the call was not made."""
        self._run(self._cancel_probe, account_id)

    def status(self, account_id: str) -> BreakerStatus:
        """The current state of an account's circuit (for monitoring and tests)."""
        state, failures, wait_us = self._run(self._status, account_id)
        return BreakerStatus(
            state=_text(state), failures=int(failures), retry_after=int(wait_us) / _MICROS
        )

    def _run(self, script: Script, account_id: str, *args: int) -> Any:
        try:
            return script(keys=[self.key(account_id)], args=list(args), client=self._redis)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise ServiceUnavailable(f"circuit breaker: Redis unreachable: {exc}") from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
