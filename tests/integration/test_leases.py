"""Account leases on the real Redis: exclusivity, fencing, renewal, expiry, takeover, pause."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from ticker_tasks.errors import ConfigError, ServiceUnavailable
from ticker_tasks.leases import FENCE_KEY, LEASE_KEY, Lease, LeaseManager
from ticker_tasks.settings import load_settings

pytestmark = pytest.mark.integration


class FakeClock:
    """A clock the test moves by hand (a paused process sees time jump)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def account():
    return f"acct-{uuid.uuid4().hex[:8]}"


def run(redis_service, body):
    """Run ``body(client)`` in a fresh event loop with its own asyncio client."""

    async def main():
        client = aioredis.Redis.from_url(redis_service.url, socket_timeout=5)
        try:
            return await body(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_only_one_manager_holds_an_account(redis_service, account):
    async def body(client):
        first = LeaseManager(client, "streamer-1", ttl_s=30)
        second = LeaseManager(client, "streamer-2", ttl_s=30)
        lease = await first.try_acquire(account)
        assert lease is not None and lease.owner == "streamer-1"
        assert await second.try_acquire(account) is None
        # Acquiring again as the holder does not hand out a second lease either.
        assert await first.try_acquire(account) is None
        holder = await second.holder(account)
        assert holder is not None
        assert (holder.owner, holder.fence) == ("streamer-1", lease.fence)
        assert 0 < holder.remaining_s <= 30
        assert await second.unheld([account, account + "-free"]) == [account + "-free"]
        assert await first.release(lease)
        assert await second.holder(account) is None

    run(redis_service, body)


def test_concurrent_acquisitions_have_one_winner(redis_service, account):
    async def body(client):
        managers = [LeaseManager(client, f"streamer-{i}", ttl_s=30) for i in range(8)]
        leases = await asyncio.gather(*(m.try_acquire(account) for m in managers))
        won = [lease for lease in leases if lease is not None]
        assert len(won) == 1
        winner = next(m for m in managers if m.owner_id == won[0].owner)
        loser = next(m for m in managers if m.owner_id != won[0].owner)
        # A manager releases only its own leases.
        assert not await loser.release(won[0])
        holder = await loser.holder(account)
        assert holder is not None and holder.owner == won[0].owner
        assert await winner.release(won[0])

    run(redis_service, body)


def test_fence_grows_with_every_acquisition(redis_service, account):
    async def body(client):
        first = LeaseManager(client, "streamer-1", ttl_s=30)
        second = LeaseManager(client, "streamer-2", ttl_s=30)
        fences = []
        for manager in (first, first, second, first):
            lease = await manager.try_acquire(account)
            assert lease is not None
            fences.append(lease.fence)
            assert await manager.release(lease)
        assert fences == sorted(fences) and len(set(fences)) == 4
        # A refused acquisition does not consume a fence number.
        lease = await first.try_acquire(account)
        assert lease is not None
        assert await second.try_acquire(account) is None
        assert int(await client.get(FENCE_KEY.format(account_id=account))) == lease.fence
        await first.release(lease)

    run(redis_service, body)


def test_renewal_keeps_the_lease_past_its_ttl(redis_service, account):
    async def body(client):
        holder = LeaseManager(client, "streamer-1", ttl_s=3, renew_every_s=0.3)
        taker = LeaseManager(client, "streamer-2", ttl_s=3)
        lease = await holder.try_acquire(account)
        assert lease is not None
        fence = lease.fence
        deadline = holder.now() + 4.5  # 1.5 TTLs
        while holder.now() < deadline:
            assert await holder.renew(lease)
            assert lease.is_valid(holder.now())
            assert await taker.try_acquire(account) is None
            await asyncio.sleep(0.3)
        assert lease.fence == fence
        current = await taker.holder(account)
        assert current is not None and current.fence == fence
        await holder.release(lease)

    run(redis_service, body)


def test_a_holder_that_stops_renewing_loses_the_account(redis_service, account):
    async def body(client):
        dead = LeaseManager(client, "streamer-dead", ttl_s=1, renew_every_s=0.2)
        taker = LeaseManager(client, "streamer-taker", ttl_s=1, renew_every_s=0.2)
        stale = await dead.try_acquire(account)
        assert stale is not None
        # The taker polls the unheld accounts until the TTL frees this one.
        taken = None
        for _ in range(100):
            if account in await taker.unheld([account]):
                taken = await taker.try_acquire(account)
                if taken is not None:
                    break
            await asyncio.sleep(0.05)
        assert taken is not None and taken.fence > stale.fence
        # The old holder can neither renew nor release the new holder's lease.
        assert not await dead.renew(stale)
        assert not stale.is_valid(dead.now())
        assert not await dead.release(stale)
        holder = await taker.holder(account)
        assert holder is not None and holder.owner == "streamer-taker"
        assert await taker.release(taken)

    run(redis_service, body)


def test_release_by_a_non_owner_fails(redis_service, account):
    async def body(client):
        owner = LeaseManager(client, "streamer-1", ttl_s=30)
        other = LeaseManager(client, "streamer-2", ttl_s=30)
        lease = await owner.try_acquire(account)
        assert lease is not None
        forged = Lease(account, "streamer-2", lease.fence, lease.expires_at)
        assert not await other.release(forged)
        assert not await other.renew(Lease(account, "streamer-2", lease.fence, other.now() + 30))
        holder = await other.holder(account)
        assert holder is not None and holder.owner == "streamer-1"
        assert await owner.release(lease)

    run(redis_service, body)


def test_safe_until_leaves_the_margin_and_a_paused_holder_closes_at_once(redis_service, account):
    clock = FakeClock()

    async def body(client):
        manager = LeaseManager(client, "streamer-1", ttl_s=10, safety_margin_s=2, clock=clock)
        lease = await manager.try_acquire(account)
        assert lease is not None
        assert lease.expires_at == 1010.0 and lease.safe_until() == 1008.0
        assert lease.is_valid(1007.9) and not lease.is_valid(1008.0)
        # Redis's own TTL ends no earlier than the local deadline.
        assert await client.pttl(LEASE_KEY.format(account_id=account)) <= 10_000
        clock.now = 1005.0
        assert await manager.renew(lease)
        assert lease.expires_at == 1015.0
        # SIGSTOP ... SIGCONT: the local deadline passed while the key may still be ours.
        clock.now = 1013.5
        assert not lease.is_valid(clock.now)
        assert not await manager.renew(lease)
        holder = await manager.holder(account)
        assert holder is not None and holder.owner == "streamer-1"
        # Dropped, then taken again with a new fence.
        assert await manager.release(lease)
        again = await manager.try_acquire(account)
        assert again is not None and again.fence > lease.fence
        await manager.release(again)

    run(redis_service, body)


def test_unreachable_redis_raises_instead_of_blocking():
    async def body():
        client = aioredis.Redis(
            host="127.0.0.1", port=1, socket_timeout=0.5, socket_connect_timeout=0.5
        )
        manager = LeaseManager(client, "streamer-1", ttl_s=3, call_timeout_s=1)
        try:
            with pytest.raises(ServiceUnavailable):
                await manager.try_acquire("nobody")
        finally:
            await client.aclose()

    asyncio.run(body())


def test_inconsistent_timings_are_refused(redis_service):
    async def body(client):
        with pytest.raises(ConfigError):
            LeaseManager(client, "s", ttl_s=3, renew_every_s=3)
        with pytest.raises(ConfigError):
            LeaseManager(client, "s", ttl_s=3, renew_every_s=1, safety_margin_s=2.5)
        with pytest.raises(ConfigError):
            LeaseManager(client, "", ttl_s=3)
        manager = LeaseManager.from_settings(client, "s", load_settings(lease_ttl_s=9))
        assert manager.renew_every_s == 3 and manager.safety_margin_s == 2

    run(redis_service, body)
