"""The desired subscriptions in PostgreSQL, their expansion, and the change notification."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from tests.support.instruments import instrument_row
from ticker_tasks.db.engine import build_sessionmaker
from ticker_tasks.db.models import Instrument, Subscription
from ticker_tasks.errors import NotFound, ValidationError
from ticker_tasks.market.registry import table_from_instruments
from ticker_tasks.subscriptions import store

pytestmark = pytest.mark.integration

EXP1 = dt.date(2026, 11, 26)
EXP2 = dt.date(2026, 12, 31)
INFY = 408065
FUTURE = 99_001


def _token(expiry, strike, kind):
    return (10_000 if expiry == EXP1 else 20_000) + (strike // 50) * 2 + (kind == "PE")


def _instruments():
    rows = [
        instrument_row(1, INFY, "INFY", "EQ", exchange="NSE", name="INFOSYS"),
        instrument_row(2, FUTURE, "NIFTY26DECFUT", "FUT", expiry=EXP2),
    ]
    iid = 10
    for expiry in (EXP1, EXP2):
        for strike in range(23_800, 24_201, 50):
            for kind in ("CE", "PE"):
                symbol = f"NIFTY{expiry:%y%b}{strike}{kind}".upper()
                token = _token(expiry, strike, kind)
                rows.append(instrument_row(iid, token, symbol, kind, expiry=expiry, strike=strike))
                iid += 1
    return rows


@pytest.fixture
def sessions(db_engine):
    factory = build_sessionmaker(db_engine)
    with factory.begin() as session:
        session.add_all(_instruments())
    return factory


@pytest.fixture
def table():
    return table_from_instruments(_instruments())


def test_add_by_symbol_or_token_is_idempotent(sessions, table):
    with sessions.begin() as session:
        first = store.add_instrument(session, table, "NSE:INFY", "ltp")
        assert (first.key, first.instrument_token, first.mode) == ("NSE:INFY", INFY, "ltp")
        again = store.add_instrument(session, table, INFY, "full")
        also = store.add_instrument(session, table, str(INFY), "full")
    assert again.subscription_id == first.subscription_id == also.subscription_id
    with sessions() as session:
        listed = store.list_subscriptions(session)
        assert [(v.subscription_id, v.target, v.mode) for v in listed] == [
            (first.subscription_id, "NSE:INFY", "full")
        ]
        assert session.query(Subscription).count() == 1


def test_add_refuses_bad_input(sessions, table):
    with sessions() as session:
        with pytest.raises(NotFound):
            store.add_instrument(session, table, "NSE:NOPE")
        with pytest.raises(ValidationError):
            store.add_instrument(session, table, "NSE:INFY", "fast")
        with pytest.raises(NotFound):
            store.add_chain(session, table, "NIFTY", dt.date(2026, 11, 27), 5)
        with pytest.raises(ValidationError):
            store.add_chain(session, table, "NIFTY", EXP1, -1)


def test_chains_are_idempotent_on_underlying_and_expiry(sessions, table):
    with sessions.begin() as session:
        chain = store.add_chain(session, table, "NIFTY", EXP1, 5, "quote")
        updated = store.add_chain(session, table, "NIFTY", EXP1, 2, "full")
        other = store.add_chain(session, table, "NIFTY", EXP2, 2)
    assert updated.subscription_id == chain.subscription_id != other.subscription_id
    with sessions() as session:
        listed = store.list_subscriptions(session)
        assert [(v.expiry, v.strikes_around_atm, v.mode) for v in listed] == [
            (EXP1, 2, "full"),
            (EXP2, 2, "quote"),
        ]
        assert store.underlyings(session) == ["NIFTY"]


def test_remove(sessions, table):
    with sessions.begin() as session:
        infy = store.add_instrument(session, table, "NSE:INFY")
        store.add_chain(session, table, "NIFTY", EXP1, 1)
        future = store.add_instrument(session, table, FUTURE)
    with sessions.begin() as session:
        assert store.remove_instrument(session, table, "NSE:INFY") == 1
        assert store.remove_instrument(session, table, "NSE:INFY") == 0
        assert store.remove_chain(session, "NIFTY", EXP1) == 1
        assert store.remove(session, future.subscription_id) == 1
        assert store.remove(session, infy.subscription_id) == 0
    with sessions() as session:
        assert store.list_subscriptions(session) == []


def test_desired_tokens_expand_chains_with_hysteresis(sessions, table):
    with sessions.begin() as session:
        store.add_instrument(session, table, "NSE:INFY", "ltp")
        # The chain's own ATM call is also wanted in ltp: the richer mode wins.
        store.add_instrument(session, table, _token(EXP1, 24_000, "CE"), "ltp")
        chain = store.add_chain(session, table, "NIFTY", EXP1, 1, "full")
    atm: dict[int, float] = {}
    with sessions() as session:
        desired = store.desired_tokens(session, table, {"NIFTY": 24_010.0}, atm=atm)
        calls = {_token(EXP1, s, k) for s in (23_950, 24_000, 24_050) for k in ("CE", "PE")}
        assert desired == {INFY: "ltp", FUTURE: "full", **dict.fromkeys(calls, "full")}
        assert atm == {chain.subscription_id: 24_000.0}
        # Within the hysteresis the chain stays; beyond it, it moves.
        same = store.desired_tokens(session, table, {"NIFTY": 24_045.0}, atm=atm)
        assert same == desired
        moved = store.desired_tokens(session, table, {"NIFTY": 24_080.0}, atm=atm)
        assert atm == {chain.subscription_id: 24_100.0}
        assert _token(EXP1, 24_150, "PE") in moved and _token(EXP1, 24_050, "CE") in moved
        assert _token(EXP1, 24_000, "PE") not in moved
        assert moved[_token(EXP1, 24_000, "CE")] == "ltp"
        # No price: the stored centre is used; without either, the chain gives nothing.
        assert store.desired_tokens(session, table, {}, atm=atm) == moved
        assert store.desired_tokens(session, table, {}) == {
            INFY: "ltp",
            _token(EXP1, 24_000, "CE"): "ltp",
        }
    with sessions.begin() as session:
        store.remove(session, chain.subscription_id)
    with sessions() as session:
        store.desired_tokens(session, table, {"NIFTY": 24_000.0}, atm=atm)
    assert atm == {}


def test_expired_chains_roll_to_the_next_expiry(sessions, table):
    with sessions.begin() as session:
        chain = store.add_chain(session, table, "NIFTY", EXP1, 0, "quote")
    after = EXP1 + dt.timedelta(days=1)
    with sessions() as session:
        rolled = store.desired_tokens(session, table, {"NIFTY": 24_000.0}, today=after)
        assert set(rolled) == {_token(EXP2, 24_000, "CE"), _token(EXP2, 24_000, "PE"), FUTURE}
    with sessions.begin() as session:
        assert store.roll_expired(session, table, EXP1) == []
        assert store.roll_expired(session, table, after) == [chain.subscription_id]
    with sessions.begin() as session:
        assert [v.expiry for v in store.list_subscriptions(session)] == [EXP2]
        # Rolling onto an expiry subscribed already merges the two.
        store.add_chain(session, table, "NIFTY", EXP1, 3, "full")
    with sessions.begin() as session:
        assert len(store.roll_expired(session, table, after)) == 1
    with sessions() as session:
        listed = store.list_subscriptions(session)
        assert [(v.subscription_id, v.expiry, v.strikes_around_atm, v.mode) for v in listed] == [
            (chain.subscription_id, EXP2, 3, "full")
        ]


def test_expired_instruments_are_not_subscribed(sessions, table):
    with sessions.begin() as session:
        store.add_instrument(session, table, "NSE:INFY")
        session.get(Instrument, 1).active = False
    with sessions() as session:
        assert store.desired_tokens(session, table, {}) == {}


def test_notify_changed_publishes_the_new_version(redis_client):
    before = store.current_version(redis_client)
    pubsub = redis_client.pubsub()
    pubsub.subscribe(store.SUBSCRIPTIONS_CHANNEL)
    try:
        received = []
        version = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.5)
            if message is None:
                continue
            if message["type"] == "subscribe":
                # Subscribed: now a change must reach us.
                version = store.notify_changed(redis_client)
                assert version == before + 1 == store.current_version(redis_client)
            elif message["type"] == "message":
                received.append(int(message["data"]))
                if received[-1] == version:
                    break
        assert version is not None and version in received
    finally:
        pubsub.close()


def test_atm_state_round_trips(redis_client):
    store.save_atm(redis_client, {7: 24_050.0, 9: 51_500.5})
    assert store.load_atm(redis_client) == {7: 24_050.0, 9: 51_500.5}
    store.save_atm(redis_client, {9: 51_600.0})
    assert store.load_atm(redis_client) == {9: 51_600.0}
    store.save_atm(redis_client, {})
    assert store.load_atm(redis_client) == {}
