"""Locks and periodic-run guards on the real Redis."""

from __future__ import annotations

import pytest

from ticker_tasks.locks import RedisLock, periodic_run


def test_lock_is_exclusive_and_expires(redis_client):
    first = RedisLock(redis_client, "job", ttl_s=5)
    second = RedisLock(redis_client, "job", ttl_s=5)
    assert first.acquire()
    assert not second.acquire(wait_s=0.2)
    # Every lock has a TTL: nothing is held forever.
    assert 0 < redis_client.pttl(first.key) <= 5000
    # Only the owner releases.
    assert not second.release()
    assert first.release()
    assert second.acquire()
    second.release()


def test_extend_only_by_owner(redis_client):
    lock = RedisLock(redis_client, "extend", ttl_s=1)
    other = RedisLock(redis_client, "extend", ttl_s=30)
    assert lock.acquire()
    assert not other.extend()
    assert lock.extend()
    assert lock.owned() and not other.owned()
    lock.release()


def test_two_runs_of_the_same_slot_run_once(redis_client):
    # Given two beats sending the same job for the same schedule slot
    outcomes = []
    for _ in range(2):
        with periodic_run(redis_client, "refresh", period_s=3600, lock_ttl_s=30, now=7200.0) as run:
            outcomes.append(run.allowed)
    # I expect one run and one skip
    assert outcomes == [True, False]
    # The next slot runs again.
    with periodic_run(redis_client, "refresh", period_s=3600, lock_ttl_s=30, now=10800.0) as run:
        assert run.allowed


def test_an_overlapping_run_is_skipped(redis_client):
    with periodic_run(redis_client, "slow", period_s=60, lock_ttl_s=30, now=60.0) as outer:
        assert outer.allowed
        with periodic_run(redis_client, "slow", period_s=60, lock_ttl_s=30, now=120.0) as inner:
            assert not inner.allowed
            assert inner.reason == "running elsewhere"


def test_a_failed_run_frees_its_slot(redis_client):
    def failing_run():
        with periodic_run(redis_client, "flaky", period_s=60, lock_ttl_s=30, now=60.0) as run:
            assert run.allowed
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        failing_run()
    with periodic_run(redis_client, "flaky", period_s=60, lock_ttl_s=30, now=61.0) as again:
        assert again.allowed
