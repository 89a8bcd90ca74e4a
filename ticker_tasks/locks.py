"""Distributed locks in Redis, always with a TTL.

:class:`RedisLock` is the one lock of the service: ``SET NX PX`` with a random owner token,
released and extended only by its owner (Lua compare-and-delete), never held forever.

:func:`periodic_run` guards periodic tasks: a run is skipped when another run of the same job
is in progress (overlap) or when the same schedule slot already ran (two beats started by
mistake send every job twice; the second send finds its slot taken).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis

LOCK_KEY = "ticker_tasks:lock:{name}"
SLOT_KEY = "ticker_tasks:periodic:{name}:{slot}"

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class RedisLock:
    """A lock with an owner token and a TTL; ``acquire`` waits at most ``wait_s``."""

    def __init__(self, client: redis.Redis, name: str, *, ttl_s: float) -> None:
        self._client = client
        self.key = LOCK_KEY.format(name=name)
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._token = secrets.token_hex(16)
        self._release = client.register_script(_RELEASE)
        self._extend = client.register_script(_EXTEND)

    def acquire(self, *, wait_s: float = 0.0, poll_s: float = 0.05) -> bool:
        """Take the lock; True when taken within ``wait_s`` seconds."""
        deadline = time.monotonic() + wait_s
        while True:
            if self._client.set(self.key, self._token, nx=True, px=self._ttl_ms):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)

    def extend(self) -> bool:
        """Push the expiry ``ttl`` further; False when the lock is no longer ours."""
        return bool(self._extend(keys=[self.key], args=[self._token, self._ttl_ms]))

    def release(self) -> bool:
        """Release the lock if we still own it."""
        return bool(self._release(keys=[self.key], args=[self._token]))

    def owned(self) -> bool:
        """Whether we hold the lock now."""
        return bool(self._client.get(self.key) == self._token.encode())


@dataclass(frozen=True)
class PeriodicRun:
    """Whether a periodic job may run now, and why not when it may not."""

    allowed: bool
    reason: str = ""


@contextmanager
def periodic_run(
    client: redis.Redis,
    name: str,
    *,
    period_s: float,
    lock_ttl_s: float,
    now: float | None = None,
) -> Iterator[PeriodicRun]:
    """Guard one run of the periodic job ``name`` scheduled every ``period_s`` seconds.

    Yields ``PeriodicRun(allowed=False, ...)`` when the job is running elsewhere or its current
    slot has run already; the caller then returns without doing anything.
    """
    lock = RedisLock(client, f"periodic:{name}", ttl_s=lock_ttl_s)
    if not lock.acquire():
        yield PeriodicRun(False, "running elsewhere")
        return
    try:
        slot = int((time.time() if now is None else now) // period_s)
        slot_key = SLOT_KEY.format(name=name, slot=slot)
        if not client.set(slot_key, "1", nx=True, ex=max(1, int(period_s * 2))):
            yield PeriodicRun(False, "this schedule slot already ran")
            return
        try:
            yield PeriodicRun(True)
        except BaseException:
            # A failed run frees its slot so a retry within the same period may run.
            client.delete(slot_key)
            raise
    finally:
        lock.release()
