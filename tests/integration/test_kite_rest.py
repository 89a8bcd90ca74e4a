"""The Kite REST client against the Kite simulator: shapes, error mapping, breaker, rate limits."""

from __future__ import annotations

import csv
import io
import multiprocessing
import time
import uuid
from datetime import datetime, timedelta

import pytest
import redis
from kiteconnect import KiteConnect
from kiteconnect import exceptions as kex

from tests.support.simulator import running_simulator
from ticker_tasks.errors import (
    AmbiguousError,
    AuthError,
    BrokerRejected,
    BrokerUnavailable,
    CircuitOpen,
    RateLimited,
)
from ticker_tasks.kite.errors import is_retryable
from ticker_tasks.kite.rest import KiteAccount, KiteClients
from ticker_tasks.settings import load_settings

INSTRUMENTS_HEADER = (
    "instrument_token,exchange_token,tradingsymbol,name,last_price,expiry,strike,tick_size,"
    "lot_size,instrument_type,segment,exchange"
)
PROCESSES = 4
CALLS_PER_PROCESS = 15
QUOTE_EVERY = 3  # one call in three is a quote, the others historical
RESULT_TIMEOUT_S = 100


@pytest.fixture(scope="module")
def sim():
    with running_simulator(seed=11, universe_size=50) as handle:
        yield handle


@pytest.fixture
def overrides(sim):
    return {"kite_rest_root": sim.rest_url, "breaker_failure_threshold": 5, "breaker_reset_s": 0.5}


@pytest.fixture
def clients(redis_client, overrides):
    factory = KiteClients(load_settings(**overrides), redis_client)
    yield factory
    factory.close()


@pytest.fixture(autouse=True)
def _no_faults(sim):
    sim.control("DELETE", "/_sim/faults")
    yield
    sim.control("DELETE", "/_sim/faults")


def _account(sim, index=0, *, token=None):
    credentials = sim.accounts[index]
    return KiteAccount(
        account_id=f"acct-{uuid.uuid4().hex[:8]}",
        api_key=credentials.api_key,
        access_token=token or credentials.access_token,
    )


@pytest.fixture(scope="module")
def listing(sim):
    credentials = sim.accounts[0]
    kite = KiteConnect(
        credentials.api_key, access_token=credentials.access_token, root=sim.rest_url
    )
    rows = list(csv.DictReader(io.StringIO(kite._get("market.instruments.all").decode())))
    equity = next(r for r in rows if r["instrument_type"] == "EQ" and r["segment"] == "NSE")
    future = next(r for r in rows if r["instrument_type"] == "FUT" and int(r["lot_size"]) > 1)
    return {"equity": equity, "future": future}


def _key(row):
    return f"{row['exchange']}:{row['tradingsymbol']}"


def _below_market(client, row, fraction=0.9):
    """A LIMIT price inside the price band but far enough below the market not to fill."""
    close = client.ohlc([_key(row)])[_key(row)]["ohlc"]["close"]
    tick = float(row["tick_size"])
    return round(round(close * fraction / tick) * tick, 2)


def _fault(sim, **spec):
    return sim.control("POST", "/_sim/faults", spec)


# --- (a) every method returns data of the right shape ------------------------------------------


def test_session_and_user_methods(sim, clients):
    account = _account(sim)
    client = clients.get(account)
    assert client.login_url().endswith(f"api_key={account.api_key}&v=3")
    profile = client.profile()
    assert {"user_id", "email", "exchanges", "products"} <= profile.keys()
    every = client.margins()
    assert {"equity", "commodity"} <= every.keys()
    equity = client.margins("equity")
    assert {"enabled", "net", "available", "utilised"} <= equity.keys()
    positions = client.positions()
    assert isinstance(positions["net"], list)
    assert isinstance(positions["day"], list)
    secret = sim.accounts[0].api_secret
    session = client.generate_session("request-token-1", secret)
    assert session["access_token"]
    assert "login_time" in session


def test_instruments_csv_is_raw_bytes(sim, clients):
    client = clients.get(_account(sim))
    every = client.instruments_csv(None)
    assert isinstance(every, bytes)
    assert every.decode().splitlines()[0] == INSTRUMENTS_HEADER
    nfo = client.instruments_csv("NFO")
    exchanges = {row["exchange"] for row in csv.DictReader(io.StringIO(nfo.decode()))}
    assert exchanges == {"NFO"}


def test_market_data_methods(sim, clients, listing):
    client = clients.get(_account(sim))
    equity, future = listing["equity"], listing["future"]
    keys = [_key(equity), _key(future)]
    quotes = client.quote(keys)
    assert set(quotes) == set(keys)
    full = quotes[_key(equity)]
    assert {"last_price", "volume", "ohlc", "depth", "timestamp"} <= full.keys()
    assert len(full["depth"]["buy"]) == len(full["depth"]["sell"]) == 5
    ltp = client.ltp(keys)
    assert set(ltp[_key(future)]) == {"instrument_token", "last_price"}
    ohlc = client.ohlc(keys)
    assert {"open", "high", "low", "close"} == set(ohlc[_key(equity)]["ohlc"])
    assert client.quote([]) == {}

    to_dt = datetime.now().replace(second=0, microsecond=0)
    candles = client.historical_data(
        int(future["instrument_token"]), to_dt - timedelta(hours=1), to_dt, "minute", oi=True
    )
    assert candles
    assert {"date", "open", "high", "low", "close", "volume", "oi"} == set(candles[0])
    daily = client.historical_data(
        int(equity["instrument_token"]), to_dt.date() - timedelta(days=10), to_dt, "day"
    )
    assert daily
    assert "oi" not in daily[0]


def test_order_methods(sim, clients, listing):
    client = clients.get(_account(sim))
    future, equity = listing["future"], listing["equity"]
    lot = int(future["lot_size"])
    order_id = client.place_order(
        variety="regular",
        exchange=future["exchange"],
        tradingsymbol=future["tradingsymbol"],
        transaction_type="BUY",
        quantity=lot,
        product="NRML",
        order_type="LIMIT",
        price=_below_market(client, future),
        tag="restlimit1",
    )
    assert isinstance(order_id, str)
    assert order_id in {order["order_id"] for order in client.orders()}
    assert client.order_history(order_id)[-1]["status"] == "OPEN"
    modified = client.modify_order(
        "regular", order_id, price=_below_market(client, future, 0.92), quantity=2 * lot
    )
    assert modified == order_id
    assert client.order_history(order_id)[-1]["quantity"] == 2 * lot
    assert client.cancel_order("regular", order_id) == order_id
    assert client.order_history(order_id)[-1]["status"] == "CANCELLED"

    filled = client.place_order(
        variety="regular",
        exchange=equity["exchange"],
        tradingsymbol=equity["tradingsymbol"],
        transaction_type="BUY",
        quantity=1,
        product="CNC",
        order_type="MARKET",
    )
    assert client.order_history(filled)[-1]["status"] == "COMPLETE"
    fills = client.order_trades(filled)
    assert [fill["order_id"] for fill in fills] == [filled] * len(fills)
    assert fills
    assert filled in {trade["order_id"] for trade in client.trades()}
    assert any(p["tradingsymbol"] == equity["tradingsymbol"] for p in client.positions()["net"])


# --- (b) error mapping --------------------------------------------------------------------------


def test_bad_token_is_an_auth_error_and_not_an_outage(sim, clients):
    account = _account(sim, token="not-the-token")
    with pytest.raises(AuthError) as caught:
        clients.get(account).profile()
    assert isinstance(caught.value.__cause__, kex.TokenException)
    assert not is_retryable(caught.value)
    assert clients.breaker.status(account.account_id).failures == 0


def test_wrong_api_secret_at_login_is_an_auth_error(sim, clients):
    with pytest.raises(AuthError):
        clients.get(_account(sim)).generate_session("request-token-2", "wrong-secret")


def test_bad_lot_size_is_rejected_with_kite_error_type(sim, clients, listing):
    future = listing["future"]
    with pytest.raises(BrokerRejected) as caught:
        clients.get(_account(sim)).place_order(
            variety="regular",
            exchange=future["exchange"],
            tradingsymbol=future["tradingsymbol"],
            transaction_type="BUY",
            quantity=int(future["lot_size"]) + 1,
            product="NRML",
            order_type="MARKET",
        )
    assert caught.value.error_type == "InputException"
    assert "lot size" in str(caught.value)
    assert not is_retryable(caught.value)


def test_injected_5xx_burst_is_retryable_for_reads(sim, clients):
    account = _account(sim)
    client = clients.get(account)
    _fault(sim, kind="rest_5xx", status=503, count=1, api_key=account.api_key,
           route_class="general")  # fmt: skip
    with pytest.raises(BrokerUnavailable) as first:
        client.profile()
    assert is_retryable(first.value)
    _fault(sim, kind="rest_5xx", status=502, body="html", count=1, api_key=account.api_key,
           route_class="general")  # fmt: skip
    with pytest.raises(BrokerUnavailable) as second:
        client.profile()
    assert isinstance(second.value.__cause__, kex.DataException)
    # The burst is over: the next call succeeds and closes the count.
    assert client.profile()["user_id"]
    assert clients.breaker.status(account.account_id).failures == 0


def test_injected_5xx_on_order_placement_is_ambiguous(sim, clients, listing):
    account = _account(sim)
    equity = listing["equity"]
    _fault(sim, kind="rest_5xx", status=500, count=1, api_key=account.api_key,
           route_class="orders")  # fmt: skip
    with pytest.raises(AmbiguousError):
        clients.get(account).place_order(
            variety="regular",
            exchange=equity["exchange"],
            tradingsymbol=equity["tradingsymbol"],
            transaction_type="BUY",
            quantity=1,
            product="CNC",
            order_type="MARKET",
        )


def test_injected_429_is_rate_limited_with_retry_after(sim, clients):
    account = _account(sim)
    _fault(sim, kind="rest_429", count=1, api_key=account.api_key, route_class="general")
    with pytest.raises(RateLimited) as caught:
        clients.get(account).profile()
    assert isinstance(caught.value.__cause__, kex.NetworkException)
    assert caught.value.retry_after > 0


def _until_probe_passes(call, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except CircuitOpen as refused:
            if time.monotonic() > deadline:
                raise
            time.sleep(min(refused.retry_after, 0.1))


def test_breaker_opens_on_outages_and_is_shared_between_clients(sim, redis_service, overrides):
    # Given two processes' client factories (separate Redis connections), one account
    settings = load_settings(**{**overrides, "breaker_failure_threshold": 2})
    first = KiteClients(settings, redis.Redis.from_url(redis_service.url))
    second = KiteClients(settings, redis.Redis.from_url(redis_service.url))
    account = _account(sim)
    _fault(sim, kind="rest_5xx", status=503, count=5, api_key=account.api_key,
           route_class="general")  # fmt: skip
    # When two calls through the first client fail (breaker_failure_threshold = 2)
    for _ in range(2):
        with pytest.raises(BrokerUnavailable):
            first.get(account).profile()
    # Then the second client refuses at once, without reaching the broker
    with pytest.raises(CircuitOpen) as refused:
        second.get(account).profile()
    assert 0 < refused.value.retry_after <= 0.5
    assert sim.control("GET", "/_sim/faults")["rest"][0]["remaining"] == 3
    # and after breaker_reset_s one probe goes through; its failure reopens the circuit.
    with pytest.raises(BrokerUnavailable):
        _until_probe_passes(second.get(account).profile)
    assert first.breaker.status(account.account_id).state == "open"
    # Once the broker is healthy again, the next probe closes the circuit for everyone.
    sim.control("DELETE", "/_sim/faults")
    assert _until_probe_passes(first.get(account).profile)["user_id"]
    assert second.get(account).profile()["user_id"]
    assert second.breaker.status(account.account_id).state == "closed"
    first.close()
    second.close()


def test_factory_caches_per_account_and_rebuilds_on_new_token(sim, clients):
    account = _account(sim)
    client = clients.get(account)
    assert clients.get(account) is client
    renewed = KiteAccount(account.account_id, account.api_key, "another-token")
    assert clients.get(renewed) is not client
    assert "another-token" not in repr(renewed)


# --- (c) the burst: our client never draws a 429, bare kiteconnect does --------------------------


def _burst_worker(mode, overrides, redis_url, credentials, tokens, start, results):
    """One OS process: CALLS_PER_PROCESS quote/historical calls, outcomes counted by kind."""
    counts = {"ok": 0, "broker_429": 0, "local_rate_limited": 0, "other": 0}
    to_dt = datetime.now().replace(second=0, microsecond=0)
    from_dt = to_dt - timedelta(minutes=30)
    keys = [f"NSE:{symbol}" for symbol in tokens["symbols"]]
    if mode == "ours":
        factory = KiteClients(load_settings(**overrides), redis.Redis.from_url(redis_url))
        client = factory.get(KiteAccount("burst-account", *credentials))
        quote, history = client.quote, client.historical_data
    else:
        kite = KiteConnect(credentials[0], access_token=credentials[1], root=overrides[
            "kite_rest_root"])  # fmt: skip

        def quote(keys):
            return kite.quote(keys)

        def history(*args, **kwargs):
            return kite.historical_data(*args, **kwargs)

    start.wait(timeout=60)
    for call in range(CALLS_PER_PROCESS):
        try:
            if call % QUOTE_EVERY == 0:
                quote(keys)
            else:
                history(tokens["token"], from_dt, to_dt, "minute")
            counts["ok"] += 1
        except RateLimited as exc:
            counts["broker_429" if exc.__cause__ is not None else "local_rate_limited"] += 1
        except kex.NetworkException as exc:
            counts["broker_429" if exc.code == 429 else "other"] += 1
        except (kex.KiteException, BrokerUnavailable, AmbiguousError):
            counts["other"] += 1
    results.put(counts)


def _burst(sim, mode, overrides, redis_url, listing):
    sim.control("POST", "/_sim/reset-stats")
    credentials = (sim.accounts[1].api_key, sim.accounts[1].access_token)
    tokens = {
        "token": int(listing["future"]["instrument_token"]),
        "symbols": [listing["equity"]["tradingsymbol"]],
    }
    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    processes = [
        context.Process(
            target=_burst_worker,
            args=(mode, overrides, redis_url, credentials, tokens, start, results),
        )
        for _ in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    start.set()
    outcomes = [results.get(timeout=RESULT_TIMEOUT_S) for _ in processes]
    for process in processes:
        process.join(timeout=RESULT_TIMEOUT_S)
        assert process.exitcode == 0
    totals = {kind: sum(o[kind] for o in outcomes) for kind in outcomes[0]}
    stats = sim.stats()
    return totals, stats, credentials[0]


@pytest.mark.timeout(240)
def test_burst_through_our_client_never_draws_a_429(sim, overrides, redis_service, listing):
    # Given 4 processes each making 15 quote/historical calls for one account at once
    burst_overrides = {**overrides, "rate_limit_max_wait_s": 60.0}
    totals, stats, api_key = _burst(sim, "ours", burst_overrides, redis_service.url, listing)
    # I expect every call served, no 429 (neither seen by the client nor counted by the broker)
    assert totals == {
        "ok": PROCESSES * CALLS_PER_PROCESS,
        "broker_429": 0,
        "local_rate_limited": 0,
        "other": 0,
    }
    assert stats["rate_limited"].get(api_key, {}) == {}
    # and the broker's busiest one-second window within the limit of each route class.
    peaks = stats["max_per_second"][api_key]
    for route_class in ("quote", "historical"):
        assert peaks[route_class]["max_requests_in_1s"] <= peaks[route_class]["limit_per_s"]


@pytest.mark.timeout(240)
def test_same_burst_through_bare_kiteconnect_draws_429s(sim, overrides, redis_service, listing):
    totals, stats, api_key = _burst(sim, "bare", overrides, redis_service.url, listing)
    assert totals["broker_429"] > 0
    assert sum(stats["rate_limited"][api_key].values()) == totals["broker_429"]
    peaks = stats["max_per_second"][api_key]
    assert any(p["max_requests_in_1s"] > p["limit_per_s"] for p in peaks.values())
