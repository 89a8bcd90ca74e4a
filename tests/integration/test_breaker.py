"""The per-account circuit breaker on the real Redis."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from ticker_tasks.breaker import KEY_PREFIX, CircuitBreaker
from ticker_tasks.errors import CircuitOpen
from ticker_tasks.settings import load_settings

RESET_S = 0.5
THRESHOLD = 3


@pytest.fixture
def settings():
    return load_settings(breaker_failure_threshold=THRESHOLD, breaker_reset_s=RESET_S)


@pytest.fixture
def breaker(redis_client, settings):
    return CircuitBreaker(redis_client, settings)


@pytest.fixture
def account():
    return f"acct-{uuid.uuid4().hex[:8]}"


def _open(breaker, account):
    for _ in range(THRESHOLD):
        breaker.record_failure(account)


def _wait_for_probe(breaker, account, timeout_s=5.0):
    """Poll until the open circuit lets a probe through; returns check()'s answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return breaker.check(account)
        except CircuitOpen as refused:
            if time.monotonic() > deadline:
                raise
            time.sleep(min(refused.retry_after, 0.05))


def test_closed_circuit_lets_calls_through(breaker, account):
    assert breaker.check(account) is False
    assert breaker.status(account).state == "closed"


def test_opens_after_threshold_consecutive_failures(breaker, account):
    for _ in range(THRESHOLD - 1):
        assert breaker.record_failure(account) == "closed"
        assert breaker.check(account) is False
    assert breaker.record_failure(account) == "open"
    with pytest.raises(CircuitOpen) as refused:
        breaker.check(account)
    assert 0.0 < refused.value.retry_after <= RESET_S


def test_a_success_resets_the_consecutive_count(breaker, account):
    for _ in range(THRESHOLD - 1):
        breaker.record_failure(account)
    breaker.record_success(account)
    for _ in range(THRESHOLD - 1):
        breaker.record_failure(account)
    assert breaker.check(account) is False
    assert breaker.status(account).failures == THRESHOLD - 1


def test_half_open_lets_exactly_one_probe_then_success_closes(breaker, account):
    _open(breaker, account)
    # After breaker_reset_s one caller becomes the probe, the others are still refused.
    assert _wait_for_probe(breaker, account) is True
    assert breaker.status(account).state == "half_open"
    with pytest.raises(CircuitOpen):
        breaker.check(account)
    breaker.record_success(account)
    assert breaker.status(account).state == "closed"
    assert [breaker.check(account) for _ in range(5)] == [False] * 5


def test_failed_probe_opens_the_circuit_again(breaker, account):
    _open(breaker, account)
    assert _wait_for_probe(breaker, account) is True
    assert breaker.record_failure(account) == "open"
    with pytest.raises(CircuitOpen):
        breaker.check(account)


def test_cancelled_probe_lets_the_next_caller_probe(breaker, account):
    _open(breaker, account)
    assert _wait_for_probe(breaker, account) is True
    breaker.cancel_probe(account)
    assert breaker.check(account) is True


def test_state_is_shared_between_instances_and_accounts_are_separate(
    redis_service, settings, account
):
    first = CircuitBreaker(redis.Redis.from_url(redis_service.url, socket_timeout=5), settings)
    second = CircuitBreaker(redis.Redis.from_url(redis_service.url, socket_timeout=5), settings)
    _open(first, account)
    with pytest.raises(CircuitOpen):
        second.check(account)
    assert second.check(f"{account}-other") is False
    assert _wait_for_probe(second, account) is True
    with pytest.raises(CircuitOpen):
        first.check(account)
    second.record_success(account)
    assert first.check(account) is False


def test_key_is_namespaced_and_expires(breaker, redis_client, account):
    breaker.record_failure(account)
    assert breaker.key(account) == f"{KEY_PREFIX}:{account}"
    ttl_ms = redis_client.pttl(breaker.key(account))
    assert 0 < ttl_ms <= (2 * RESET_S + 60) * 1000
    breaker.record_success(account)
    assert not redis_client.exists(breaker.key(account))
