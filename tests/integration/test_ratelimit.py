"""The global rate limiter on the real Redis, hammered from several OS processes."""

from __future__ import annotations

import multiprocessing
import time
import uuid

import pytest
import redis

from ticker_tasks.errors import RateLimited
from ticker_tasks.ratelimit import KEY_PREFIX, RateLimiter, Rule, rate_key

PROCESSES = 4
RESULT_TIMEOUT_S = 90


def _max_in_window(stamps: list[float], width: float = 1.0) -> int:
    """Largest number of timestamps inside any window [t, t + width)."""
    ordered = sorted(stamps)
    best = start = 0
    for end, stamp in enumerate(ordered):
        while stamp - ordered[start] >= width:
            start += 1
        best = max(best, end - start + 1)
    return best


def _hammer(url, key, rules, calls, start, results):
    """One OS process: ``calls`` blocking acquisitions, reporting slots and wake-up times."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    limiter = RateLimiter(client)
    start.wait(timeout=60)
    slots, woke = [], []
    for _ in range(calls):
        reservation = limiter.reserve(key, rules, max_wait=60.0)
        time.sleep(reservation.wait)
        woke.append(time.time())
        slots.append(reservation.slot_at)
    results.put((slots, woke))
    client.close()


def _try_many(url, key, rules, calls, start, results):
    """One OS process: ``calls`` non-blocking attempts, reporting how many were granted."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    limiter = RateLimiter(client)
    start.wait(timeout=60)
    results.put(sum(limiter.try_acquire(key, rules) for _ in range(calls)))
    client.close()


def _run_processes(target, args):
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    results = context.Queue()
    processes = [
        context.Process(target=target, args=(*args, start, results)) for _ in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    start.set()
    collected = [results.get(timeout=RESULT_TIMEOUT_S) for _ in processes]
    for process in processes:
        process.join(timeout=RESULT_TIMEOUT_S)
        assert process.exitcode == 0
    return collected


@pytest.fixture
def key():
    return rate_key(f"api-{uuid.uuid4().hex[:8]}", "general")


@pytest.fixture
def limiter(redis_client):
    return RateLimiter(redis_client)


def test_four_processes_never_exceed_the_per_second_limit(redis_service, key):
    # Given Kite's 10 req/s paced at 90% and 4 processes taking 15 slots each
    limit = 10
    rules = (Rule.per_second(limit).scaled(0.9),)
    outcomes = _run_processes(_hammer, (redis_service.url, key, rules, 15))
    slots = [slot for process_slots, _ in outcomes for slot in process_slots]
    woke = [stamp for _, process_woke in outcomes for stamp in process_woke]
    # I expect every slot granted once, at most 9 slots in any 1.0 s of Redis time
    assert len(slots) == len(set(slots)) == PROCESSES * 15
    assert _max_in_window(slots) <= 9
    # and, as the broker would count the arrivals (wake-ups, with jitter), never above 10.
    assert _max_in_window(woke) <= limit


def test_four_processes_share_a_minute_window_exactly(redis_service, key):
    # Given 12 requests per minute and 4 processes trying 10 times each without waiting
    rules = (Rule.window(12, 60.0),)
    granted = _run_processes(_try_many, (redis_service.url, key, rules, 10))
    # I expect exactly 12 grants in total, whoever got them.
    assert sum(granted) == 12


def test_minute_rule_refuses_with_retry_after_and_reserves_nothing(limiter, redis_client, key):
    rules = (Rule.per_second(100), Rule.window(5, 60.0))
    for _ in range(5):
        limiter.acquire(key, rules, max_wait=1.0)
    state_key, window_key = limiter.redis_keys(key, rules)
    before = redis_client.hgetall(state_key)
    with pytest.raises(RateLimited) as refused:
        limiter.acquire(key, rules, max_wait=1.0)
    # The sixth slot frees up when the first leaves the minute window.
    assert 50.0 < refused.value.retry_after <= 60.0
    assert redis_client.zcard(window_key) == 5
    assert redis_client.hgetall(state_key) == before


def test_small_max_wait_raises_rate_limited_with_the_time_to_the_slot(limiter, key):
    rules = (Rule.per_second(1.0),)
    assert limiter.acquire(key, rules, max_wait=0.0) == 0.0
    with pytest.raises(RateLimited) as refused:
        limiter.acquire(key, rules, max_wait=0.05)
    assert 0.0 < refused.value.retry_after <= 1.0
    assert not limiter.try_acquire(key, rules)


def test_try_acquire_takes_only_a_free_slot(limiter, key):
    rules = (Rule.per_second(2.0),)
    assert limiter.try_acquire(key, rules)
    assert not limiter.try_acquire(key, rules)


def test_acquire_sleeps_exactly_until_its_slot(redis_client, key):
    slept: list[float] = []
    limiter = RateLimiter(redis_client, sleep=slept.append)
    rules = (Rule.per_second(4.0),)
    waits = [limiter.acquire(key, rules, max_wait=5.0) for _ in range(3)]
    # The first slot is free, each later one is one interval (0.25 s) further away.
    assert waits[0] == 0.0
    assert slept == waits[1:]
    assert 0.0 < waits[1] <= 0.25 < waits[2] <= 0.5


def test_keys_are_namespaced_and_expire(limiter, redis_client):
    key = rate_key("apikey123", "orders")
    rules = (Rule.per_second(10).scaled(0.9), Rule.window(360, 60.0), Rule.window(4500, 86_400.0))
    limiter.acquire(key, rules, max_wait=1.0)
    names = limiter.redis_keys(key, rules)
    assert names == [
        f"{KEY_PREFIX}:apikey123:orders",
        f"{KEY_PREFIX}:apikey123:orders:60s",
        f"{KEY_PREFIX}:apikey123:orders:86400s",
    ]
    ttls = [redis_client.pttl(name) for name in names]
    # Each key lives as long as it can matter (plus a small margin), never forever.
    assert 0 < ttls[0] <= 10_000
    assert 55_000 < ttls[1] <= 70_000
    assert 86_000_000 < ttls[2] <= 86_410_000
    redis_client.delete(*names)


def test_calls_without_window_rules_are_paced_but_not_counted(limiter, redis_client, key):
    # Given placements (paced + 3/min) and modifications (paced only) on one key
    placements = (Rule.per_second(100), Rule.window(3, 60.0))
    changes = placements[:1]
    limiter.acquire(key, placements, max_wait=1.0)
    for _ in range(5):
        limiter.acquire(key, changes, max_wait=1.0)
    state_key, window_key = limiter.redis_keys(key, placements)
    # I expect all six paced on the key, one counted in the minute window
    assert int(redis_client.hget(state_key, "seq")) == 6
    assert redis_client.zcard(window_key) == 1
    # so two more placements fit this minute, and the fourth does not.
    limiter.acquire(key, placements, max_wait=1.0)
    limiter.acquire(key, placements, max_wait=1.0)
    with pytest.raises(RateLimited):
        limiter.acquire(key, placements, max_wait=1.0)


def test_bad_arguments_are_refused(limiter, key):
    with pytest.raises(ValueError, match="at least one rule"):
        limiter.acquire(key, (), max_wait=1.0)
    with pytest.raises(ValueError, match="negative"):
        limiter.acquire(key, (Rule.per_second(1),), max_wait=-1.0)
    with pytest.raises(ValueError, match="positive"):
        Rule(limit=0, period_s=1.0)
