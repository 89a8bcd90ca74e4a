"""Chain subscriptions re-centred on the market, with the simulator, PostgreSQL and Redis."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.support.services import Service
from tests.support.simulator import SimulatorHandle, running_simulator
from tests.support.stack import sim_runtime
from tests.support.workers import celery_worker, producer_app
from ticker_tasks.db.models import Subscription
from ticker_tasks.locks import SLOT_KEY
from ticker_tasks.market.calendar import IST
from ticker_tasks.market.registry import InstrumentTable, RegistryCache
from ticker_tasks.runtime import Runtime
from ticker_tasks.subscriptions import store
from ticker_tasks.subscriptions.recentre import price_source, recentre_subscriptions

pytestmark = pytest.mark.integration

API_KEY, ACCESS_TOKEN = "rc_key", "rc_token"
TASK = "ticker_tasks.subscriptions.recentre"
STRIKES_EACH_SIDE = 2
RESULT_TIMEOUT_S = 60


@dataclass
class Stack:
    sim: SimulatorHandle
    runtime: Runtime
    table: InstrumentTable
    env: dict[str, str]
    today: dt.date

    def quote_requests(self) -> int:
        """Requests this api_key made to the quote endpoints (``/quote``, ``/quote/ltp``, ...)."""
        routes = self.sim.stats()["requests"].get(API_KEY, {})
        return sum(route["count"] for name, route in routes.items() if "/quote" in name)


class FixedPrices:
    """An injected price source: one price for every key asked, calls counted."""

    def __init__(self, price: float) -> None:
        self.price = price
        self.calls: list[list[str]] = []

    def __call__(self, keys: Sequence[str]) -> Mapping[str, float]:
        self.calls.append(list(keys))
        return {key: self.price for key in keys}


@pytest.fixture(scope="module")
def stack(migrated_postgres_url: str, redis_service: Service) -> Iterator[Stack]:
    with (
        running_simulator(universe_size=1000, accounts=[f"{API_KEY}:{ACCESS_TOKEN}"]) as sim,
        sim_runtime(
            sim,
            database_url=migrated_postgres_url,
            redis_url=redis_service.url,
            account_id="rc",
            api_key=API_KEY,
            access_token=ACCESS_TOKEN,
        ) as built,
    ):
        table = RegistryCache(built.runtime.redis, check_interval_s=0).current()
        yield Stack(sim, built.runtime, table, built.env, dt.datetime.now(IST).date())


@pytest.fixture
def fresh(stack: Stack) -> Iterator[Stack]:
    """No subscription and no stored ATM before and after each test."""

    def clear() -> None:
        with stack.runtime.sessions.begin() as session:
            session.query(Subscription).delete()
        stack.runtime.redis.delete(store.ATM_KEY)

    clear()
    yield stack
    clear()


def _nifty_chain(stack: Stack, expiry_index: int = 0) -> tuple[int, dt.date]:
    expiry = stack.table.expiries("NIFTY")[expiry_index]
    with stack.runtime.sessions.begin() as session:
        view = store.add_chain(session, stack.table, "NIFTY", expiry, STRIKES_EACH_SIDE, "quote")
    return view.subscription_id, expiry


def _desired(stack: Stack) -> dict[int, str]:
    """The desired set as a streamer computes it from the stored state."""
    with stack.runtime.sessions() as session:
        return store.desired_tokens(
            session, stack.table, {}, atm=store.load_atm(stack.runtime.redis)
        )


def _expected_tokens(stack: Stack, expiry: dt.date, atm: float) -> set[int]:
    chain = stack.table.chain("NIFTY", expiry).around_atm(atm, STRIKES_EACH_SIDE)
    tokens = {int(t) for t in chain.tokens().tolist()}
    assert chain.future_token is not None
    return tokens | {chain.future_token}


def test_nifty_maps_to_its_index_and_nearest_future(stack: Stack) -> None:
    source = price_source(stack.table, "NIFTY", stack.today)
    assert source.spot_key == "NSE:NIFTY 50"
    assert source.future_key is not None and source.future_key.endswith("FUT")
    assert source.price({source.future_key: 25_100.0}) == 25_100.0  # spot missing: future
    assert source.price({source.spot_key: 25_000.0, source.future_key: 25_100.0}) == 25_000.0
    stock = price_source(stack.table, "INFY", stack.today)
    assert stock.spot_key == "NSE:INFY"


def test_chain_centres_on_the_index_price_with_one_quote_request(fresh: Stack) -> None:
    stack = fresh
    sid, expiry = _nifty_chain(stack)
    before = store.current_version(stack.runtime.redis)
    requests = stack.quote_requests()

    outcome = recentre_subscriptions(stack.runtime)

    assert stack.quote_requests() == requests + 1
    assert outcome.quote_requests == 1
    price = outcome.prices["NIFTY"]
    strikes = [float(s) for s in stack.table.chain("NIFTY", expiry).strikes]
    atm = outcome.atm[sid]
    assert atm == min(strikes, key=lambda s: abs(s - price))
    assert outcome.recentred == [sid] and outcome.changed
    assert outcome.version == store.current_version(stack.runtime.redis) == before + 1
    assert store.load_atm(stack.runtime.redis) == {sid: atm}
    desired = _desired(stack)
    assert set(desired) == _expected_tokens(stack, expiry, atm)
    assert set(desired.values()) == {"quote"}
    assert outcome.tokens == len(desired) == 2 * (2 * STRIKES_EACH_SIDE + 1) + 1

    # A second run asks Kite once more, never more.
    recentre_subscriptions(stack.runtime)
    assert stack.quote_requests() == requests + 2


def test_recentres_only_beyond_the_hysteresis_and_notifies_only_on_change(
    fresh: Stack,
) -> None:
    stack = fresh
    client = stack.runtime.redis
    sid, expiry = _nifty_chain(stack)
    strikes = [float(s) for s in stack.table.chain("NIFTY", expiry).strikes]
    centre = strikes[len(strikes) // 2]
    step = strikes[len(strikes) // 2 + 1] - centre
    hysteresis = stack.runtime.settings.subscription_atm_hysteresis_strikes
    threshold = step * (0.5 + hysteresis)

    prices = FixedPrices(centre)
    first = recentre_subscriptions(stack.runtime, fetcher=prices)
    assert first.atm == {sid: centre} and first.changed
    version = store.current_version(client)
    centred = _desired(stack)

    for price, expected_atm in [
        (centre, centre),  # same price: nothing to do
        (centre + 0.9 * threshold, centre),  # past the midpoint, within the hysteresis
        (centre - 0.9 * threshold, centre),
    ]:
        prices.price = price
        outcome = recentre_subscriptions(stack.runtime, fetcher=prices)
        assert outcome.atm == {sid: expected_atm}, price
        assert not outcome.changed and outcome.version is None and outcome.recentred == []
        assert store.current_version(client) == version
        assert _desired(stack) == centred

    prices.price = centre + 1.1 * threshold
    moved = recentre_subscriptions(stack.runtime, fetcher=prices)
    new_atm = min(strikes, key=lambda s: abs(s - prices.price))
    assert new_atm > centre
    assert moved.atm == {sid: new_atm} and moved.recentred == [sid]
    assert moved.changed and moved.version == store.current_version(client) == version + 1
    assert set(_desired(stack)) == _expected_tokens(stack, expiry, new_atm)

    # Back towards the old centre but within the hysteresis of the new one: it stays.
    prices.price = new_atm - 0.9 * threshold
    back = recentre_subscriptions(stack.runtime, fetcher=prices)
    assert back.atm == {sid: new_atm} and not back.changed
    assert store.current_version(client) == version + 1

    # One price request per run, for the index and the future together.
    assert len(prices.calls) == 6
    assert all(len(keys) == 2 and "NSE:NIFTY 50" in keys for keys in prices.calls)


def test_an_expired_chain_rolls_to_the_next_expiry(fresh: Stack) -> None:
    stack = fresh
    sid, expiry = _nifty_chain(stack, 0)
    following = stack.table.expiries("NIFTY")[1]
    prices = FixedPrices(float(stack.table.chain("NIFTY", following).strikes.mean()))
    recentre_subscriptions(stack.runtime, fetcher=prices, today=expiry)  # expiry day: trades
    version = store.current_version(stack.runtime.redis)
    with stack.runtime.sessions() as session:
        row = session.get(Subscription, sid)
        assert row is not None and row.expiry == expiry

    outcome = recentre_subscriptions(
        stack.runtime, fetcher=prices, today=expiry + dt.timedelta(days=1)
    )

    assert outcome.rolled == [sid] and outcome.changed
    assert store.current_version(stack.runtime.redis) == version + 1
    with stack.runtime.sessions() as session:
        row = session.get(Subscription, sid)
        assert row is not None and row.expiry == following
    assert set(_desired(stack)) == _expected_tokens(stack, following, outcome.atm[sid])
    old = _expected_tokens(stack, expiry, outcome.atm[sid])
    assert not (set(_desired(stack)) & (old - {stack.table.chain("NIFTY", expiry).future_token}))


def test_the_task_skips_a_doubled_run_in_the_same_slot(
    fresh: Stack, tmp_path: Path, redis_client: redis.Redis
) -> None:
    stack = fresh
    sid, _ = _nifty_chain(stack)
    for key in redis_client.scan_iter(SLOT_KEY.format(name="subscriptions.recentre", slot="*")):
        redis_client.delete(key)
    producer = producer_app()
    log = tmp_path / "worker.log"
    try:
        with celery_worker(["maintenance"], env=stack.env, concurrency=1, log_path=log):
            # Both sends must fall in one minute slot: start early in a minute.
            deadline = time.monotonic() + 70
            while time.time() % 60 > 30 and time.monotonic() < deadline:
                time.sleep(0.5)
            requests = stack.quote_requests()
            first = producer.send_task(TASK, queue="maintenance").get(timeout=RESULT_TIMEOUT_S)
            second = producer.send_task(TASK, queue="maintenance").get(timeout=RESULT_TIMEOUT_S)
    except Exception:
        print(log.read_text() if log.exists() else "(no worker log)")
        raise
    assert "skipped" not in first, first
    assert first["quote_requests"] == 1 and first["atm"].keys() == {str(sid)}
    assert second == {"skipped": "this schedule slot already ran"}
    assert stack.quote_requests() == requests + 1
