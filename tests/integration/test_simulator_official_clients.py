"""The unmodified official clients against the simulator, over real sockets.

One simulator subprocess serves the module (each test uses its own account, so the
per-api_key rate limits of one test never trip another). Every KiteTicker scenario runs in a
fresh subprocess (``tests/support/kite_ticker_probe.py``): Twisted's reactor cannot restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import io
import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp
import pytest
import requests
from kiteconnect import KiteConnect
from kiteconnect import exceptions as kex

from tests.support.simulator import Credentials, SimulatorHandle, running_simulator

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "kite"
PROBE = Path(__file__).resolve().parent.parent / "support" / "kite_ticker_probe.py"
ACCOUNTS = [f"key_{n:02d}:token_{n:02d}:secret_{n:02d}" for n in range(32)]
IST = timezone(timedelta(hours=5, minutes=30))
INFY, RELIANCE, TCS = 408065, 738561, 2953217
NIFTY, BANKNIFTY = 256265, 260105
CSV_HEADER = (
    "instrument_token,exchange_token,tradingsymbol,name,last_price,expiry,strike,"
    "tick_size,lot_size,instrument_type,segment,exchange"
)


# --------------------------------------------------------------------------- helpers


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def assert_like(ours: Any, theirs: Any, path: str = "$") -> None:
    """``ours`` has every key of ``theirs`` with a value of the same JSON type (null: any)."""
    if ours is None or theirs is None:
        return
    if isinstance(theirs, dict):
        assert isinstance(ours, dict), path
        missing = set(theirs) - set(ours)
        assert not missing, f"{path}: missing {sorted(missing)}"
        for key, value in theirs.items():
            assert_like(ours[key], value, f"{path}.{key}")
    elif isinstance(theirs, list):
        assert isinstance(ours, list), path
        if theirs and ours:
            assert_like(ours[0], theirs[0], f"{path}[0]")
    elif isinstance(theirs, bool):
        assert isinstance(ours, bool), path
    elif isinstance(theirs, int | float):
        assert isinstance(ours, int | float) and not isinstance(ours, bool), path
    else:
        assert isinstance(ours, type(theirs)), f"{path}: {type(ours)} vs {type(theirs)}"


def common_keys(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The fields present in every fixture row (optional ones dropped)."""
    keys = set.intersection(*(set(r) for r in rows))
    return {k: v for k, v in rows[0].items() if k in keys}


class PacedSession:
    """``KiteConnect.reqsession`` that keeps a client under Kite's per-api_key rate limits.

    The client is unmodified: it calls ``reqsession.request`` (``requests`` by default); this
    object waits before delegating so that quote calls are 1/s, historical 3/s, others 10/s.
    """

    INTERVALS = {"quote": 1.05, "historical": 0.36, "other": 0.11}

    def __init__(self) -> None:
        self.last: dict[str, float] = {}

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        path = urlparse(url).path
        klass = "other"
        if path.startswith("/quote"):
            klass = "quote"
        elif path.startswith("/instruments/historical"):
            klass = "historical"
        wait = self.last.get(klass, -1e9) + self.INTERVALS[klass] - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self.last[klass] = time.monotonic()
        return requests.request(method, url, **kwargs)


class Api:
    """Raw HTTP access with an account's credentials (to see the JSON as sent)."""

    def __init__(self, sim: SimulatorHandle, account: Credentials, paced: PacedSession) -> None:
        self.sim = sim
        self.paced = paced
        self.headers = {
            "Authorization": f"token {account.api_key}:{account.access_token}",
            "X-Kite-Version": "3",
        }

    def get(self, path: str, **params: Any) -> requests.Response:
        url = self.sim.rest_url + path
        return self.paced.request("GET", url, params=params, headers=self.headers, timeout=15)


def probe(sim: SimulatorHandle, account: Credentials, **options: Any) -> dict[str, Any]:
    """Run one KiteTicker scenario in a fresh process and return its report."""
    process = start_probe(sim, account, **options)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def start_probe(
    sim: SimulatorHandle, account: Credentials, **options: Any
) -> subprocess.Popen[str]:
    opts = {"root": sim.ws_url, "api_key": account.api_key, "access_token": account.access_token}
    opts.update(options)
    env = {**os.environ, "TZ": "Asia/Kolkata", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        [sys.executable, str(PROBE), json.dumps(opts)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_connected(process: subprocess.Popen[str]) -> None:
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.strip() == "CONNECTED", line


def finish_probe(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    with running_simulator(seed=11, universe_size=4000, accounts=ACCOUNTS) as handle:
        yield handle


_NEXT_ACCOUNT = itertools.count()


@pytest.fixture
def account(sim: SimulatorHandle) -> Credentials:
    """A fresh account per test: rate limits, orders and token faults are per api_key."""
    return sim.accounts[next(_NEXT_ACCOUNT)]


def ist_now() -> datetime:
    """Naive IST wall time (Kite reads from/to as IST)."""
    return datetime.now(IST).replace(tzinfo=None)


def ist(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, IST).replace(tzinfo=None)


@pytest.fixture
def paced() -> PacedSession:
    return PacedSession()


@pytest.fixture
def kite(sim: SimulatorHandle, account: Credentials, paced: PacedSession) -> KiteConnect:
    """The official client for the test's account, paced under the rate limits."""
    client = KiteConnect(account.api_key, access_token=account.access_token, root=sim.rest_url)
    client.reqsession = paced
    return client


# --------------------------------------------------------------------------- REST


def test_session_profile_and_margins_have_the_fixture_shapes(sim, account, kite, paced):
    checksum_client = KiteConnect(account.api_key, root=sim.rest_url)
    checksum_client.reqsession = paced
    session = checksum_client.generate_session("any-request-token", api_secret=account.api_secret)
    assert session["access_token"] == account.access_token
    raw = paced.request(
        "POST",
        sim.rest_url + "/session/token",
        data={
            "api_key": account.api_key,
            "request_token": "rt",
            "checksum": hashlib.sha256(
                f"{account.api_key}rt{account.api_secret}".encode()
            ).hexdigest(),
        },
        timeout=10,
    ).json()
    assert_like(raw, fixture("generate_session.json"))
    with pytest.raises(kex.TokenException):
        checksum_client.generate_session("rt", api_secret="wrong-secret")

    api = Api(sim, account, paced)
    assert_like(api.get("/user/profile").json(), fixture("profile.json"))
    assert_like(api.get("/user/margins").json(), fixture("margins.json"))
    assert kite.profile()["user_id"]
    assert set(kite.margins()) == {"equity", "commodity"}
    assert kite.margins("equity")["enabled"] is True

    assert kite.invalidate_access_token() is True
    with pytest.raises(kex.TokenException) as info:
        kite.profile()
    assert info.value.code == 403
    checksum_client.generate_session("again", api_secret=account.api_secret)  # logs back in
    assert kite.profile()["user_id"]


def test_wrong_token_raises_token_exception(sim, account):
    bad = KiteConnect(account.api_key, access_token="not-the-token", root=sim.rest_url)
    with pytest.raises(kex.TokenException) as info:
        bad.positions()
    assert info.value.code == 403
    assert "Incorrect `api_key` or `access_token`." in str(info.value)


def test_instrument_dump_csv(sim, account, kite, paced):
    raw = Api(sim, account, paced).get("/instruments")
    assert "csv" in raw.headers["Content-Type"]
    text = raw.text
    assert text.splitlines()[0] == CSV_HEADER
    assert text.splitlines()[0] == (FIXTURES / "instruments_all.csv").read_text().splitlines()[0]
    rows = list(csv.DictReader(io.StringIO(text)))
    for row in rows:
        for column in (
            "instrument_token",
            "exchange_token",
            "last_price",
            "strike",
            "tick_size",
            "lot_size",
        ):
            assert row[column] != "", (column, row)
    parsed = kite.instruments()
    assert len(parsed) == len(rows) >= 4000
    by_token = {r["instrument_token"]: r for r in parsed}
    assert by_token[INFY]["tradingsymbol"] == "INFY"
    assert by_token[NIFTY]["segment"] == "INDICES"
    nfo = kite.instruments("NFO")
    assert nfo and all(r["exchange"] == "NFO" for r in nfo)
    assert {r["instrument_type"] for r in nfo} == {"FUT", "CE", "PE"}
    nifty_lots = {r["lot_size"] for r in nfo if r["name"] == "NIFTY"}
    assert nifty_lots == {75}


def test_quotes_have_the_fixture_shapes(sim, account, kite, paced):
    api = Api(sim, account, paced)
    raw = api.get("/quote", i=["NSE:INFY", "NFO:NOSUCH24JANFUT"]).json()
    assert list(raw["data"]) == ["NSE:INFY"]  # unknown keys are absent
    assert_like(raw, fixture("quote.json"))
    quote = raw["data"]["NSE:INFY"]
    assert quote["depth"]["buy"][0]["price"] < quote["depth"]["sell"][0]["price"]
    assert_like(api.get("/quote/ltp", i="NSE:INFY").json(), fixture("ltp.json"))
    assert_like(api.get("/quote/ohlc", i="NSE:INFY").json(), fixture("ohlc.json"))
    both = kite.quote("NSE:INFY", "NSE:NIFTY 50")
    assert both["NSE:NIFTY 50"]["instrument_token"] == NIFTY
    assert isinstance(both["NSE:INFY"]["timestamp"], datetime)


def test_quote_burst_is_rate_limited_with_network_exception(sim, account):
    kite = KiteConnect(account.api_key, access_token=account.access_token, root=sim.rest_url)
    kite.ltp("NSE:INFY")
    with pytest.raises(kex.NetworkException) as info:
        kite.ltp("NSE:INFY")  # the second quote call within one second
    assert info.value.code == 429
    assert "Too many requests" in str(info.value)
    stats = sim.stats()
    assert stats["rate_limited"][account.api_key]["quote"] >= 1
    assert stats["max_per_second"][account.api_key]["quote"]["max_accepted_in_1s"] == 1
    assert stats["max_per_second"][account.api_key]["quote"]["max_requests_in_1s"] >= 2
    routes = stats["requests"][account.api_key]
    assert routes["GET /quote/ltp"]["statuses"]["429"] >= 1
    assert len(routes["GET /quote/ltp"]["timestamps"]) == routes["GET /quote/ltp"]["count"]


def test_historical_candles(sim, account, kite, paced):
    api = Api(sim, account, paced)
    now = ist_now()
    frm, to = (
        (now - timedelta(minutes=20)).strftime("%Y-%m-%d %H:%M:%S"),
        now.strftime("%Y-%m-%d %H:%M:%S"),
    )
    raw = api.get(f"/instruments/historical/{INFY}/minute", **{"from": frm, "to": to}).json()
    assert_like(raw, fixture("historical_minute.json"))
    candles = raw["data"]["candles"]
    assert candles and all(len(c) == 6 for c in candles)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:00\+0530", c[0]) for c in candles)
    with_oi = kite.historical_data(INFY, frm, to, "minute", oi=True)
    assert with_oi and all("oi" in c for c in with_oi)
    for interval in (
        "minute",
        "3minute",
        "5minute",
        "10minute",
        "15minute",
        "30minute",
        "60minute",
        "day",
    ):
        assert kite.historical_data(NIFTY, now - timedelta(days=2), now, interval), interval
    with pytest.raises(kex.InputException):
        kite.historical_data(INFY, now - timedelta(days=61), now, "minute")
    with pytest.raises(kex.InputException):
        kite.historical_data(INFY, now - timedelta(days=401), now, "60minute")
    assert kite.historical_data(INFY, now - timedelta(days=400), now, "60minute")
    with pytest.raises(kex.InputException):
        kite.historical_data(INFY, now - timedelta(days=2), now, "2minute")
    future = next(r for r in kite.instruments("NFO") if r["instrument_type"] == "FUT")
    assert kite.historical_data(
        future["instrument_token"], now - timedelta(days=5), now, "day", continuous=True
    )

    # The minute candles are the trade path the stream carries.
    start = (int(time.time()) - 360) // 60 * 60
    trades = sim.control(
        "GET", f"/_sim/trades?instrument_token={INFY}&from={start}&to={start + 240}"
    )["trades"]
    bars: dict[int, list[float]] = {}
    for epoch, price, qty, _ in trades:
        bar = bars.setdefault(epoch // 60 * 60, [price, price, price, price, 0])
        bar[1], bar[2], bar[3], bar[4] = max(bar[1], price), min(bar[2], price), price, bar[4] + qty
    served = kite.historical_data(INFY, ist(start), ist(start + 240), "minute")
    assert {
        int(c["date"].timestamp()): [c["open"], c["high"], c["low"], c["close"], c["volume"]]
        for c in served
    } == bars


def test_orders_trades_positions_lifecycle(sim, account, kite, paced):
    api = Api(sim, account, paced)
    order_id = kite.place_order(
        "regular", "NSE", "INFY", "BUY", 5, "MIS", "MARKET", tag="lifecycle1"
    )
    assert order_id.isdigit()
    history = kite.order_history(order_id)
    assert [h["status"] for h in history] == [
        "PUT ORDER REQ RECEIVED",
        "VALIDATION PENDING",
        "OPEN PENDING",
        "OPEN",
        "COMPLETE",
    ]
    assert history[-1]["tag"] == "lifecycle1" and history[-1]["filled_quantity"] == 5
    raw_orders = api.get("/orders").json()
    assert_like(
        raw_orders, {"status": "success", "data": [common_keys(fixture("orders.json")["data"])]}
    )
    assert_like(api.get("/trades").json(), fixture("trades.json"))
    assert_like(api.get(f"/orders/{order_id}/trades").json(), fixture("order_trades.json"))
    assert_like(api.get("/portfolio/positions").json(), fixture("positions.json"))
    fill = kite.order_trades(order_id)[0]
    quote = kite.quote("NSE:INFY")["NSE:INFY"]
    assert fill["quantity"] == 5 and fill["average_price"] > 0
    assert abs(fill["average_price"] - quote["last_price"]) < quote["last_price"] * 0.01

    # A LIMIT far below the market stays OPEN; modify, then cancel.
    low = round(quote["ohlc"]["close"] * 0.85, 1)
    limit_id = kite.place_order(
        "regular", "NSE", "INFY", "BUY", 3, "MIS", "LIMIT", price=low, tag="rest2"
    )
    assert kite.order_history(limit_id)[-1]["status"] == "OPEN"
    assert kite.modify_order("regular", limit_id, quantity=4, price=round(low + 0.5, 1)) == limit_id
    modified = kite.order_history(limit_id)[-1]
    assert (
        modified["status"] == "OPEN" and modified["quantity"] == 4 and modified["modified"] is True
    )
    assert kite.cancel_order("regular", limit_id) == limit_id
    assert kite.order_history(limit_id)[-1]["status"] == "CANCELLED"
    with pytest.raises(kex.OrderException):
        kite.cancel_order("regular", limit_id)
    with pytest.raises(kex.OrderException):
        kite.order_history("999999999999999")

    statuses = {o["order_id"]: o["status"] for o in kite.orders()}
    assert statuses == {order_id: "COMPLETE", limit_id: "CANCELLED"}
    positions = kite.positions()
    infy = next(p for p in positions["net"] if p["tradingsymbol"] == "INFY")
    assert infy["quantity"] == 5
    book = sim.control("GET", "/_sim/orders")[account.api_key]
    assert {o["order_id"] for o in book} == {order_id, limit_id}


def test_order_validation_uses_kite_exception_types(sim, account, kite):
    option = next(
        r for r in kite.instruments("NFO") if r["name"] == "NIFTY" and r["instrument_type"] == "CE"
    )
    symbol = option["tradingsymbol"]
    with pytest.raises(kex.InputException, match="lot size"):
        kite.place_order("regular", "NFO", symbol, "BUY", 10, "NRML", "MARKET")
    with pytest.raises(kex.InputException, match="freeze"):
        kite.place_order("regular", "NFO", symbol, "BUY", 75 * 30, "NRML", "MARKET")
    with pytest.raises(kex.InputException, match=r"[Tt]ick size"):
        kite.place_order("regular", "NSE", "INFY", "BUY", 1, "CNC", "LIMIT", price=1500.03)
    with pytest.raises(kex.InputException, match="outside"):
        kite.place_order("regular", "NSE", "INFY", "BUY", 1, "CNC", "LIMIT", price=10.0)
    with pytest.raises(kex.InputException):
        kite.place_order("regular", "NSE", "NOSUCHSTOCK", "BUY", 1, "CNC", "MARKET")
    done = kite.place_order("regular", "NFO", symbol, "BUY", 75, "NRML", "MARKET")
    with pytest.raises(kex.OrderException):
        kite.modify_order("regular", done, price=1.0)


def test_rms_rejections_are_rejected_orders(sim, account, kite):
    too_big = kite.place_order("regular", "NSE", "INFY", "BUY", 2000, "CNC", "MARKET")
    rejected = kite.order_history(too_big)
    assert [h["status"] for h in rejected] == [
        "PUT ORDER REQ RECEIVED",
        "VALIDATION PENDING",
        "REJECTED",
    ]
    assert rejected[-1]["status_message"].startswith("Insufficient funds")
    sim.control(
        "POST",
        "/_sim/faults",
        {"kind": "order_reject", "api_key": account.api_key, "message": "RMS says no"},
    )
    refused = kite.place_order("regular", "NSE", "INFY", "BUY", 1, "CNC", "MARKET")
    assert kite.order_history(refused)[-1]["status_message"] == "RMS says no"
    accepted = kite.place_order("regular", "NSE", "INFY", "BUY", 1, "CNC", "MARKET")
    assert kite.order_history(accepted)[-1]["status"] == "COMPLETE"
    equity = kite.margins("equity")
    assert 0 < equity["utilised"]["debits"] < 2000 and equity["net"] < equity["available"]["cash"]


def test_rest_fault_bursts(sim, account, kite):
    sim.control(
        "POST",
        "/_sim/faults",
        {"kind": "rest_5xx", "status": 503, "count": 1, "api_key": account.api_key},
    )
    with pytest.raises(kex.NetworkException) as info:
        kite.profile()
    assert info.value.code == 503
    sim.control(
        "POST",
        "/_sim/faults",
        {"kind": "rest_5xx", "status": 502, "count": 1, "api_key": account.api_key, "body": "html"},
    )
    with pytest.raises(kex.DataException):
        kite.profile()
    sim.control(
        "POST",
        "/_sim/faults",
        {"kind": "rest_429", "count": 2, "route_class": "general", "api_key": account.api_key},
    )
    for _ in range(2):
        with pytest.raises(kex.NetworkException):
            kite.orders()
    assert kite.orders() == []


def test_order_response_delayed_past_the_client_timeout(sim, account):
    slow = KiteConnect(
        account.api_key, access_token=account.access_token, root=sim.rest_url, timeout=1
    )
    sim.control(
        "POST",
        "/_sim/faults",
        {"kind": "order_response_delay", "seconds": 3, "api_key": account.api_key},
    )
    with pytest.raises(requests.exceptions.Timeout):
        slow.place_order("regular", "NSE", "INFY", "BUY", 1, "CNC", "MARKET", tag="ambiguous")
    orders = slow.orders()
    assert [o["tag"] for o in orders] == ["ambiguous"]
    assert orders[0]["status"] == "COMPLETE"


def test_token_expiry_fault_and_new_token(sim, account, kite):
    sim.control("POST", "/_sim/faults", {"kind": "token_expiry", "api_key": account.api_key})
    with pytest.raises(kex.TokenException):
        kite.profile()
    report = probe(sim, account, duration=1)
    assert any("403 - Forbidden" in reason for _, reason in report["closes"])
    sim.control(
        "POST", "/_sim/accounts", {"api_key": account.api_key, "access_token": "fresh-token"}
    )
    fresh = KiteConnect(account.api_key, access_token="fresh-token", root=sim.rest_url)
    assert fresh.profile()["user_id"]


# --------------------------------------------------------------------------- ticker


def test_ticker_modes_packet_sizes_and_ticks_equal_the_model(sim, account):
    report = probe(
        sim,
        account,
        modes={"ltp": [RELIANCE], "quote": [TCS, NIFTY], "full": [INFY, BANKNIFTY]},
        duration=4,
    )
    assert report["connects"] == 1 and not report["errors"]
    lengths = {int(k) for k in report["packet_lengths"]}
    assert {8, 28, 32, 44, 184} <= lengths
    ticks = report["ticks"]
    modes = {(t["instrument_token"], t["mode"]) for t in ticks}
    assert {
        (RELIANCE, "ltp"),
        (TCS, "quote"),
        (NIFTY, "quote"),
        (INFY, "full"),
        (BANKNIFTY, "full"),
    } <= modes
    nifty = [t for t in ticks if t["instrument_token"] == NIFTY]
    assert all(t["tradable"] is False and "ohlc" in t for t in nifty)
    full = [t for t in ticks if t["instrument_token"] == INFY and t["mode"] == "full"]
    for t in full:
        assert len(t["depth"]["buy"]) == len(t["depth"]["sell"]) == 5
        assert t["depth"]["buy"][0]["price"] < t["depth"]["sell"][0]["price"]

    # After the subscription snapshot, every tick is one trade of the model's trade path.
    index = [t for t in ticks if t["instrument_token"] == BANKNIFTY and t["mode"] == "full"]
    for token, stream, stamp in (
        (INFY, full, "last_trade_time"),
        (BANKNIFTY, index, "exchange_timestamp"),
    ):
        first = int(stream[0][stamp])
        query = f"/_sim/trades?instrument_token={token}&from={first}&to={first + 120}"
        by_second = {e: (p, q) for e, p, q, _ in sim.control("GET", query)["trades"]}
        checked = 0
        for before, tick in itertools.pairwise(stream):
            if tick[stamp] == before[stamp]:
                assert tick["last_price"] == before["last_price"]  # a repeated snapshot
                continue
            price, qty = by_second[int(tick[stamp])]
            assert tick["last_price"] == price
            if token == INFY:
                assert tick["last_traded_quantity"] == qty
                assert tick["volume_traded"] - before["volume_traded"] == qty
            checked += 1
        assert checked >= 1, token

    # The simulator counted exactly the packets the client received.
    stats = sim.stats()["ws"]["connections"]
    mine = [c for c in stats.values() if c["api_key"] == account.api_key]
    assert len(mine) == 1
    assert mine[0]["packets_sent"] == sum(report["packet_lengths"].values())
    assert mine[0]["subscriptions"] == 5 and mine[0]["modes"] == {"ltp": 1, "quote": 2, "full": 2}


def test_ticker_heartbeat_when_nothing_to_send(sim, account):
    report = probe(sim, account, duration=3.5)
    assert report["connects"] == 1
    assert report["heartbeats"] >= 2
    assert report["ticks"] == []


def test_ticker_bad_token_is_403_at_upgrade(sim, account):
    bad = Credentials(account.api_key, "wrong", account.api_secret)
    report = probe(sim, bad, duration=1)
    assert report["connects"] == 0
    assert (
        report["closes"]
        and "WebSocket connection upgrade failed (403 - Forbidden)" in report["closes"][0][1]
    )


def test_ticker_fourth_connection_is_429(sim, account):
    before = sim.stats()["ws"]["rejected"]["429"]
    report = probe(sim, account, connections=4, duration=2)
    assert report["connects"] == 3
    rejected = [reason for _, reason in report["closes"] if "429" in reason]
    assert len(rejected) == 1 and "upgrade failed (429" in rejected[0]
    assert sim.stats()["ws"]["rejected"]["429"] == before + 1


def test_ticker_3000_token_cap(sim, account, kite):
    tokens = [r["instrument_token"] for r in kite.instruments()][:3001]
    assert len(tokens) == 3001
    report = probe(sim, account, subscribe=tokens, duration=3)
    message = "Can't subscribe to more than 3000 instruments."
    assert json.dumps({"type": "error", "data": message}) in report["texts"]
    assert [0, message] in report["errors"]
    assert report["connects"] == 1 and not report["closes"]  # the connection stays up
    assert report["ticks"]
    conns = [
        c for c in sim.stats()["ws"]["connections"].values() if c["api_key"] == account.api_key
    ]
    assert conns[0]["subscriptions"] == 3000


def test_ticker_order_update_after_rest_placement(sim, account, kite):
    process = start_probe(sim, account, announce=True, duration=3)
    wait_connected(process)
    order_id = kite.place_order(
        "regular", "NSE", "INFY", "SELL", 2, "MIS", "MARKET", tag="wsupdate"
    )
    report = finish_probe(process)
    updates = [u for u in report["order_updates"] if u["order_id"] == order_id]
    assert [u["status"] for u in updates] == ["OPEN", "COMPLETE"]
    assert_like(updates[-1], fixture("postback.json"))
    assert updates[-1]["tag"] == "wsupdate"
    expected = hashlib.sha256(
        f"{order_id}{updates[-1]['order_timestamp']}{account.api_secret}".encode()
    ).hexdigest()
    assert updates[-1]["checksum"] == expected


def test_ticker_drop_fault_makes_the_client_reconnect(sim, account):
    process = start_probe(
        sim, account, announce=True, duration=5, stop_retry=False, subscribe=[INFY]
    )
    wait_connected(process)
    result = sim.control("POST", "/_sim/faults", {"kind": "drop", "api_key": account.api_key})
    assert len(result["connections"]) == 1
    report = finish_probe(process)
    assert report["closes"] and report["closes"][0][0] == 1006
    assert report["connects"] == 2  # KiteTicker reconnected by itself


# --------------------------------------------------------------------------- raw WebSocket


async def _raw_session(
    url: str, seconds: float, faults: list[dict[str, Any]], sim: SimulatorHandle
) -> dict[str, Any]:
    seen: dict[str, Any] = {"types": [], "binary": []}
    async with aiohttp.ClientSession() as session, session.ws_connect(url, autoping=False) as ws:
        await ws.send_str(json.dumps({"a": "subscribe", "v": [INFY, NIFTY]}))
        await ws.send_str(json.dumps({"a": "mode", "v": ["full", [INFY, NIFTY]]}))
        await ws.send_str(json.dumps({"a": "subscribe", "v": [INFY, NIFTY]}))  # idempotent
        await asyncio.sleep(0.5)
        for body in faults:
            await asyncio.to_thread(sim.control, "POST", "/_sim/faults", body)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                msg = await ws.receive(timeout=0.5)
            except TimeoutError:
                continue
            seen["types"].append(msg.type.name)
            if msg.type == aiohttp.WSMsgType.BINARY:
                seen["binary"].append(msg.data)
    return seen


def _frame_is_consistent(frame: bytes) -> bool:
    if len(frame) == 1:
        return frame == b"\x00"
    count, pos = int.from_bytes(frame[:2], "big"), 2
    for _ in range(count):
        if pos + 2 > len(frame):
            return False
        pos += 2 + int.from_bytes(frame[pos : pos + 2], "big")
    return pos == len(frame)


def test_raw_socket_shared_port_heartbeats_no_pong_and_malformed_frames(account):
    with running_simulator(
        seed=2,
        universe_size=300,
        accounts=[f"{account.api_key}:{account.access_token}"],
        shared_port=True,
    ) as shared:
        assert shared.rest_url.replace("http", "ws") == shared.ws_url
        url = f"{shared.ws_url}/?api_key={account.api_key}&access_token={account.access_token}"
        fault = {"kind": "malformed", "frames": 2, "api_key": account.api_key}
        seen = asyncio.run(_raw_session(url, 3.0, [fault], shared))
    assert "PONG" not in seen["types"] and "PING" not in seen["types"]
    frames = [f for f in seen["binary"] if len(f) > 1]
    broken = [f for f in frames if not _frame_is_consistent(f)]
    assert len(broken) == 2
    assert all(_frame_is_consistent(f) for f in frames[frames.index(broken[-1]) + 1 :])


def test_expired_contract_leaves_the_dump_and_its_token_is_reused(sim, account, kite, paced):
    option = next(
        r
        for r in kite.instruments("NFO")
        if r["name"] == "BANKNIFTY" and r["instrument_type"] == "PE"
    )
    token, symbol = option["instrument_token"], option["tradingsymbol"]
    expired = sim.control("POST", "/_sim/instruments/expire", {"instrument_token": token})
    assert expired["active"] is False
    assert token not in {r["instrument_token"] for r in kite.instruments("NFO")}
    assert kite.ltp(f"NFO:{symbol}") == {}
    with pytest.raises(kex.InputException):
        kite.historical_data(token, ist_now() - timedelta(hours=1), ist_now(), "minute")

    new = sim.control(
        "POST",
        "/_sim/instruments/reuse",
        {"instrument_token": token, "strike": option["strike"] + 100},
    )
    assert (
        new["instrument_token"] == token
        and new["tradingsymbol"] != symbol
        and new["active"] is True
    )
    listed = {r["instrument_token"]: r for r in kite.instruments("NFO")}
    assert listed[token]["tradingsymbol"] == new["tradingsymbol"]
    assert listed[token]["expiry"].isoformat() == new["expiry"]
    assert (
        kite.ltp(f"NFO:{new['tradingsymbol']}")[f"NFO:{new['tradingsymbol']}"]["instrument_token"]
        == token
    )
    assert kite.ltp(f"NFO:{symbol}") == {}


async def _in_process(account: Credentials) -> dict[str, Any]:
    from ticker_tasks.simulator import SimulatorConfig, start_simulator
    from ticker_tasks.simulator.config import Account

    config = SimulatorConfig(
        rest_port=0,
        ws_port=0,
        seed=4,
        universe_size=200,
        accounts=(Account(account.api_key, account.access_token, account.api_secret, "SM0001"),),
    )
    running = await start_simulator(config)
    seen: dict[str, Any] = {"rest_url": running.rest_url, "ws_url": running.ws_url}
    try:
        assert running.model.universe.active_count() >= 200
        url = f"{running.ws_url}/?api_key={account.api_key}&access_token={account.access_token}"
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            await ws.send_str(json.dumps({"a": "mode", "v": ["ltp", [NIFTY]]}))  # mode subscribes
            first = await ws.receive(timeout=5)
            seen["first"] = first.data
            async with session.post(
                running.rest_url + "/_sim/faults",
                json={"kind": "silence", "api_key": account.api_key},
            ) as response:
                assert response.status == 200
            await asyncio.sleep(0.2)
            silent = 0
            with contextlib.suppress(TimeoutError):
                while True:
                    await ws.receive(timeout=1.6)
                    silent += 1
            seen["during_silence"] = silent
            async with session.delete(running.rest_url + "/_sim/faults") as response:
                assert response.status == 200
            seen["after"] = (await ws.receive(timeout=5)).data
            async with session.get(running.rest_url + "/_sim/stats") as response:
                seen["stats"] = await response.json()
    finally:
        await running.stop()
    return seen


def test_in_process_api_silence_fault_and_mode_subscribes(account):
    seen = asyncio.run(_in_process(account))
    assert seen["rest_url"] != seen["ws_url"].replace("ws", "http")  # two ports
    assert isinstance(seen["first"], bytes) and len(seen["first"]) == 2 + 2 + 8  # one LTP packet
    assert int.from_bytes(seen["first"][4:8], "big") == NIFTY
    assert seen["during_silence"] <= 1  # at most a frame already in flight
    assert isinstance(seen["after"], bytes)
    conn = next(iter(seen["stats"]["ws"]["connections"].values()))
    assert conn["frames_dropped"] >= 1 and conn["subscriptions"] == 1
