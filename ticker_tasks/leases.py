"""Account leases: each account is streamed by exactly one streamer cluster-wide.

A lease is the Redis key ``ticker_tasks:lease:{account_id}`` holding ``"{fence}:{owner}"``
with a TTL (``PX``). ``fence`` is a fencing token: ``INCR ticker_tasks:lease:{account_id}:fence``
at every new acquisition, so it grows strictly across holders; stamp it on what the holder
produces (batches, logs) so a consumer can tell a stale holder's output apart.

Protocol:

* **Acquire** (:meth:`LeaseManager.try_acquire`): one Lua script checks the key is free, INCRs
  the fence and ``SET NX PX``es the value — atomically, so two streamers never both win.
* **Local deadline**: :attr:`Lease.expires_at` is the *start* of the successful acquire or
  renew call plus the TTL, on this process's clock: Redis started its TTL later, so the local
  deadline never falls after the key's expiry. :meth:`Lease.safe_until` subtracts a safety
  margin (setting ``lease_safety_margin_s``) for the time it takes to close sockets.
* **Holder**: renew every ``renew_every_s`` (TTL/3 by default). :meth:`LeaseManager.renew`
  (Lua: PEXPIRE only while the value is still ours) returns False when the lease is lost:
  close that account's sockets immediately and drop the lease. When Redis does not answer in
  time it raises :class:`~ticker_tasks.errors.ServiceUnavailable`: keep streaming and retry at
  the next tick, but the moment ``lease.is_valid(now)`` is False — the local deadline passed,
  renewals failing all along — close the sockets and drop the lease. A holder should also
  check ``lease.is_valid(clock())`` before forwarding a batch.
* **Pause** (SIGSTOP/SIGCONT, a long GC or VM stall): on waking, the local deadline has
  passed, so ``is_valid`` is False at once and the holder closes the sockets without waiting
  for Redis; :meth:`LeaseManager.renew` refuses such a lease (a lease that lapsed locally is
  never revived: :meth:`LeaseManager.release` it, then acquire anew with a new fence). The
  default clock counts time spent in system suspend (``CLOCK_BOOTTIME``), unlike
  ``time.monotonic``.
* **Taker**: every few seconds (setting ``lease_poll_interval_s``) look for unheld accounts
  (:meth:`LeaseManager.unheld`) and :meth:`~LeaseManager.try_acquire` them; a dead holder's
  accounts are taken within the TTL plus one poll interval.
* **Release** (:meth:`LeaseManager.release`): Lua compare-and-delete; a non-owner cannot
  release.

Every Redis call runs under ``asyncio.timeout(call_timeout_s)`` (and the client's own socket
timeout) and raises :class:`~ticker_tasks.errors.ServiceUnavailable` on timeout or a Redis
error, so no call blocks forever.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ticker_tasks.errors import ConfigError, ServiceUnavailable
from ticker_tasks.settings import Settings

LEASE_KEY = "ticker_tasks:lease:{account_id}"
FENCE_KEY = "ticker_tasks:lease:{account_id}:fence"

# KEYS[1]: lease, KEYS[2]: fence counter; ARGV[1]: owner, ARGV[2]: ttl (ms).
# Returns the new fence, or 0 when the lease is held.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local fence = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], fence .. ':' .. ARGV[1], 'NX', 'PX', ARGV[2])
return fence
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

T = TypeVar("T")


def default_clock() -> float:
    """Seconds on a clock that never goes back and keeps counting during system suspend."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is not None:
        return time.clock_gettime(boottime)
    return time.monotonic()


def default_owner_id() -> str:
    """A process-unique owner id: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass
class Lease:
    """A lease this process holds (as far as it knows).

    Attributes:
        account_id: The leased account.
        owner: Our owner id.
        fence: The fencing token of this acquisition (strictly grows across acquisitions).
        expires_at: Local deadline on the manager's clock: start of the last successful
            acquire/renew call plus the TTL.
        margin_s: Safety margin before ``expires_at`` by which the sockets must be closed.
    """

    account_id: str
    owner: str
    fence: int
    expires_at: float
    margin_s: float = 0.0

    @property
    def value(self) -> str:
        """The value stored under the lease key."""
        return f"{self.fence}:{self.owner}"

    def safe_until(self) -> float:
        """The time by which the account's sockets must be closed unless renewed."""
        return self.expires_at - self.margin_s

    def is_valid(self, now: float) -> bool:
        """Whether the holder may keep streaming at ``now`` (the manager's clock)."""
        return now < self.safe_until()


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds an account's lease, as Redis says now."""

    owner: str
    fence: int
    remaining_s: float


class LeaseManager:
    """Acquire, renew and release account leases for one streamer (``owner_id``)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        owner_id: str,
        ttl_s: float,
        renew_every_s: float | None = None,
        *,
        safety_margin_s: float | None = None,
        call_timeout_s: float | None = None,
        clock: Callable[[], float] = default_clock,
    ) -> None:
        """Build a manager; raise :class:`ConfigError` on inconsistent timings.

        Args:
            redis: Client (with a socket timeout).
            owner_id: This streamer's id, unique cluster-wide (see :func:`default_owner_id`).
            ttl_s: Lease TTL.
            renew_every_s: Renewal period; TTL/3 by default.
            safety_margin_s: Close sockets this long before the local deadline; TTL/5 default.
            call_timeout_s: Longest wait for one Redis call; ``renew_every_s`` by default.
            clock: Local clock for deadlines (must not go back).
        """
        renew = ttl_s / 3 if renew_every_s is None else renew_every_s
        margin = ttl_s / 5 if safety_margin_s is None else safety_margin_s
        if not owner_id:
            raise ConfigError("lease owner id must not be empty")
        if ttl_s <= 0 or renew <= 0 or margin < 0 or renew >= ttl_s - margin:
            raise ConfigError(
                f"lease timings need 0 < renew_every ({renew}) < ttl ({ttl_s}) - "
                f"safety margin ({margin})"
            )
        self.owner_id = owner_id
        self.ttl_s = ttl_s
        self.renew_every_s = renew
        self.safety_margin_s = margin
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._call_timeout_s = renew if call_timeout_s is None else call_timeout_s
        self._clock = clock
        self._redis = redis
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    @classmethod
    def from_settings(
        cls, redis: aioredis.Redis, owner_id: str, settings: Settings
    ) -> LeaseManager:
        """A manager with the TTL and safety margin from ``settings`` (renewal every TTL/3)."""
        return cls(
            redis,
            owner_id,
            settings.lease_ttl_s,
            settings.lease_ttl_s / 3,
            safety_margin_s=settings.lease_safety_margin_s,
            call_timeout_s=min(settings.redis_socket_timeout_s, settings.lease_ttl_s / 3),
        )

    def now(self) -> float:
        """The manager's clock (the one :attr:`Lease.expires_at` is on)."""
        return self._clock()

    async def _call(self, what: str, call: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self._call_timeout_s):
                return await call
        except (RedisError, TimeoutError, OSError) as exc:
            raise ServiceUnavailable(f"lease {what}: redis did not answer: {exc!r}") from exc

    async def try_acquire(self, account_id: str) -> Lease | None:
        """Take the account's lease if nobody holds it; None when it is held (by anyone).

        Raises:
            ServiceUnavailable: Redis did not answer in time (the lease may have been set; it
                then expires after the TTL).
        """
        start = self._clock()
        keys = [LEASE_KEY.format(account_id=account_id), FENCE_KEY.format(account_id=account_id)]
        raw: Any = await self._call(
            "acquire", self._acquire(keys=keys, args=[self.owner_id, self._ttl_ms])
        )
        fence = int(raw)
        if fence <= 0:
            return None
        lease = Lease(account_id, self.owner_id, fence, start + self.ttl_s, self.safety_margin_s)
        if not lease.is_valid(self._clock()):
            # The call took so long that the lease is unusable on arrival: give it back.
            await self.release(lease)
            return None
        return lease

    async def renew(self, lease: Lease) -> bool:
        """Extend the lease by the TTL; False when it is lost (close its sockets now).

        A lease whose local deadline has passed, or of another owner, is never renewed (False
        without a call).

        Raises:
            ServiceUnavailable: Redis did not answer in time; the lease stays valid until
                ``lease.safe_until()``.
        """
        start = self._clock()
        if lease.owner != self.owner_id or not lease.is_valid(start):
            return False
        key = LEASE_KEY.format(account_id=lease.account_id)
        raw: Any = await self._call(
            "renew", self._renew(keys=[key], args=[lease.value, self._ttl_ms])
        )
        if not int(raw):
            lease.expires_at = float("-inf")
            return False
        lease.expires_at = start + self.ttl_s
        return True

    async def release(self, lease: Lease) -> bool:
        """Give the lease up (only if still ours); the lease is invalid locally afterwards."""
        if lease.owner != self.owner_id:
            return False
        lease.expires_at = float("-inf")
        key = LEASE_KEY.format(account_id=lease.account_id)
        raw: Any = await self._call("release", self._release(keys=[key], args=[lease.value]))
        return bool(int(raw))

    async def holder(self, account_id: str) -> LeaseHolder | None:
        """Who holds the account's lease now, or None."""
        key = LEASE_KEY.format(account_id=account_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.get(key)
        pipe.pttl(key)
        raw: Any = await self._call("holder", pipe.execute())
        value, pttl = raw
        if value is None:
            return None
        text = value.decode() if isinstance(value, bytes) else str(value)
        fence, _, owner = text.partition(":")
        return LeaseHolder(owner=owner, fence=int(fence), remaining_s=max(0, int(pttl)) / 1000)

    async def unheld(self, account_ids: Sequence[str]) -> list[str]:
        """Those of ``account_ids`` whose lease nobody holds (one round trip)."""
        if not account_ids:
            return []
        keys = [LEASE_KEY.format(account_id=a) for a in account_ids]
        raw: Any = await self._call("unheld", self._redis.mget(keys))
        return [a for a, value in zip(account_ids, raw, strict=True) if value is None]
