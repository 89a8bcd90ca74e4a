"""Subscription planning: capacity, canaries, minimal churn, diffs; chains around ATM."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ticker_tasks.db.models import NO_EXPIRY, Instrument
from ticker_tasks.errors import ValidationError
from ticker_tasks.market.registry import table_from_instruments
from ticker_tasks.subscriptions.plan import (
    AccountCapacity,
    ChainSpec,
    Plan,
    expand_chain,
    plan_subscriptions,
    recenter,
    roll_expiry,
    water_fill,
)

CANARY = 256265


def _tokens(n, start=1_000_000, mode="quote"):
    return {start + i: mode for i in range(n)}


def _check(plan, desired, accounts, canaries=(CANARY,)):
    """Invariants every plan keeps; returns {token: connection} of placed tokens."""
    limits = {a.account_id: a for a in accounts}
    where = {}
    for (account, index), tokens in plan.connections.items():
        limit = limits[account]
        assert 0 <= index < limit.max_connections
        # Capacity counts the canaries.
        assert len(tokens) <= limit.tokens_per_connection
        for canary in canaries:
            assert canary in tokens
        for token in tokens:
            if token in canaries:
                continue
            assert token not in where, f"token {token} on two connections"
            where[token] = (account, index)
            assert tokens[token] == desired[token]
    wanted = {t for t in desired if t not in canaries}
    # Nothing dropped silently: every desired token is placed or reported.
    assert set(where) | set(plan.unplaced) == wanted
    assert not set(where) & set(plan.unplaced)
    return where


def test_8997_tokens_and_a_canary_fill_three_connections_of_one_account():
    accounts = [AccountCapacity("A")]
    desired = _tokens(8997)
    plan = plan_subscriptions(desired, accounts, canaries=[CANARY])
    _check(plan, desired, accounts)
    assert sorted(plan.connections) == [("A", 0), ("A", 1), ("A", 2)]
    assert [len(t) for t in plan.connections.values()] == [3000, 3000, 3000]
    assert plan.unplaced == {}
    # With a 4th connection allowed, the open ones are filled first: it is never used.
    roomy = [AccountCapacity("A", max_connections=4)]
    plan4 = plan_subscriptions(desired, roomy, canaries=[CANARY])
    assert sorted(plan4.connections) == [("A", 0), ("A", 1), ("A", 2)]
    # One token more does not fit three connections.
    over = plan_subscriptions(_tokens(8998), accounts, canaries=[CANARY])
    assert over.unplaced == {1_008_997: "quote"}


def test_27000_tokens_over_three_accounts():
    accounts = [AccountCapacity(a) for a in ("A", "B", "C")]
    desired = _tokens(27_000)
    plan = plan_subscriptions(desired, accounts, canaries=[CANARY])
    where = _check(plan, desired, accounts)
    # 9 connections x (3000 - 1 canary) = 26,991 slots.
    assert len(where) == 26_991
    assert len(plan.unplaced) == 9
    assert len(plan.connections) == 9
    fits = plan_subscriptions(_tokens(26_991), accounts, canaries=[CANARY])
    assert fits.unplaced == {}


def test_new_connections_spread_over_accounts():
    accounts = [AccountCapacity(a) for a in ("A", "B", "C")]
    plan = plan_subscriptions(_tokens(5000), accounts, canaries=[CANARY])
    assert sorted(plan.connections) == [("A", 0), ("B", 0)]


def test_unplaced_are_reported_when_over_capacity():
    accounts = [AccountCapacity("A", max_connections=2, tokens_per_connection=10)]
    desired = _tokens(25, mode="full")
    plan = plan_subscriptions(desired, accounts, canaries=[CANARY])
    where = _check(plan, desired, accounts)
    assert len(where) == 18
    assert plan.unplaced == {t: "full" for t in sorted(desired)[18:]}
    assert plan_subscriptions(desired, [], canaries=[CANARY]).unplaced == desired


def test_adding_ten_tokens_changes_only_those_ten():
    accounts = [AccountCapacity(a) for a in ("A", "B", "C")]
    desired = _tokens(20_000)
    before = plan_subscriptions(desired, accounts, canaries=[CANARY])
    more = {**desired, **_tokens(10, start=500, mode="full")}
    after = plan_subscriptions(more, accounts, canaries=[CANARY], previous=before)
    _check(after, more, accounts)
    diff = after.diff(before)
    subscribed = {t: m for d in diff.values() for t, m in d.subscribe.items()}
    assert subscribed == _tokens(10, start=500, mode="full")
    assert all(not d.unsubscribe and not d.mode_changes for d in diff.values())
    placed_before = before.placed()
    assert {t: k for t, k in after.placed().items() if t in placed_before} == placed_before


def test_new_tokens_go_to_the_connection_with_most_room():
    accounts = [AccountCapacity("A", tokens_per_connection=100)]
    previous = Plan(
        connections={
            ("A", 0): {CANARY: "ltp", **_tokens(80)},
            ("A", 1): {CANARY: "ltp", **_tokens(20, start=2_000_000)},
        },
        canaries=(CANARY,),
    )
    desired = {**_tokens(80), **_tokens(20, start=2_000_000), **_tokens(30, start=3_000_000)}
    plan = plan_subscriptions(desired, accounts, canaries=[CANARY], previous=previous)
    diff = plan.diff(previous)
    assert set(diff) == {("A", 1)}
    assert len(diff[("A", 1)].subscribe) == 30


def test_removing_an_account_moves_only_its_tokens():
    accounts = [AccountCapacity(a) for a in ("A", "B", "C")]
    desired = _tokens(12_000)
    before = plan_subscriptions(desired, accounts, canaries=[CANARY])
    old = before.placed()
    moved = {t for t, (account, _) in old.items() if account == "B"}
    assert moved
    remaining = [a for a in accounts if a.account_id != "B"]
    after = plan_subscriptions(desired, remaining, canaries=[CANARY], previous=before)
    new = _check(after, desired, remaining)
    assert {t for t in old if old[t] != new[t]} == moved
    diff = after.diff(before)
    for key, change in diff.items():
        if key[0] == "B":
            assert change.unsubscribe == frozenset(before.connections[key])
            assert not change.subscribe
        else:
            assert not change.unsubscribe and not change.mode_changes
            assert set(change.subscribe) <= moved | {CANARY}


def test_mode_change_is_a_mode_message_not_a_resubscription():
    accounts = [AccountCapacity("A")]
    desired = _tokens(100)
    before = plan_subscriptions(desired, accounts, canaries=[CANARY])
    changed = dict(desired)
    for token in list(changed)[:5]:
        changed[token] = "full"
    after = plan_subscriptions(changed, accounts, canaries=[CANARY], previous=before)
    diff = after.diff(before)
    assert list(diff) == [("A", 0)]
    assert diff[("A", 0)].mode_changes == {t: "full" for t in list(desired)[:5]}
    assert not diff[("A", 0)].subscribe and not diff[("A", 0)].unsubscribe


def test_removed_tokens_are_unsubscribed_and_empty_connections_go():
    accounts = [AccountCapacity("A")]
    desired = _tokens(4000)
    before = plan_subscriptions(desired, accounts, canaries=[CANARY])
    keep = dict(list(desired.items())[:100])
    after = plan_subscriptions(keep, accounts, canaries=[CANARY], previous=before)
    assert list(after.connections) == [("A", 0)]
    diff = after.diff(before)
    assert diff[("A", 0)].unsubscribe == frozenset(list(desired)[100:2999])
    assert diff[("A", 1)].unsubscribe == frozenset(before.connections[("A", 1)])
    nothing = plan_subscriptions({}, accounts, canaries=[CANARY], previous=after)
    assert nothing.connections == {}


def test_canaries_are_on_every_connection_and_take_a_desired_mode():
    accounts = [AccountCapacity("A"), AccountCapacity("B")]
    desired = {**_tokens(7000), CANARY: "full"}
    plan = plan_subscriptions(desired, accounts, canaries=[CANARY])
    assert len(plan.connections) == 3
    assert all(tokens[CANARY] == "full" for tokens in plan.connections.values())
    assert CANARY not in plan.placed()
    plain = plan_subscriptions(_tokens(10), accounts, canaries=[CANARY])
    assert all(tokens[CANARY] == "ltp" for tokens in plain.connections.values())
    # Only the canary desired: one connection carries it.
    alone = plan_subscriptions({CANARY: "quote"}, accounts, canaries=[CANARY])
    assert dict(alone.connections) == {("A", 0): {CANARY: "quote"}}


def test_plan_is_deterministic():
    accounts = [AccountCapacity(a) for a in ("C", "A", "B")]
    desired = dict(reversed(list(_tokens(10_000).items())))
    first = plan_subscriptions(desired, accounts, canaries=[CANARY])
    second = plan_subscriptions(_tokens(10_000), list(reversed(accounts)), canaries=[CANARY])
    assert first == second
    assert Plan.from_json(first.to_json()) == first


def test_bad_input_is_refused():
    with pytest.raises(ValidationError):
        plan_subscriptions({1: "fast"}, [AccountCapacity("A")])
    with pytest.raises(ValidationError):
        plan_subscriptions({1: "ltp"}, [AccountCapacity("A"), AccountCapacity("A")])


@given(st.lists(st.integers(0, 50), min_size=1, max_size=9), st.integers(0, 500))
def test_water_fill_gives_each_token_to_the_emptiest(rooms, n):
    counts = water_fill(rooms, n)
    assert sum(counts) == min(n, sum(rooms))
    assert all(0 <= c <= r for c, r in zip(counts, rooms, strict=True))
    left = [r - c for r, c in zip(rooms, counts, strict=True)]
    # Where something was placed, no other connection was left with more than one extra room.
    if any(counts):
        assert max(left) - min(r for r, c in zip(left, counts, strict=True) if c) <= 1


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sets(st.integers(1, 400), max_size=120),
            st.sets(st.sampled_from("ABC"), min_size=0, max_size=3),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_successive_plans_keep_invariants_and_placements(steps):
    previous = None
    for tokens, account_ids in steps:
        accounts = [AccountCapacity(a, 2, 25) for a in sorted(account_ids)]
        desired = {t: ("ltp", "quote", "full")[t % 3] for t in tokens}
        plan = plan_subscriptions(desired, accounts, canaries=[CANARY], previous=previous)
        where = _check(plan, desired, accounts)
        if previous is not None:
            for token, key in previous.placed().items():
                if token in desired and key[0] in account_ids:
                    assert where[token] == key
        previous = plan


# --- chains around ATM -------------------------------------------------------------------------
EXP1 = dt.date(2026, 11, 26)
EXP2 = dt.date(2026, 12, 31)
STRIKES = range(23_800, 24_201, 50)


def _ce(e, strike):
    """Token of a call (the put's is one more)."""
    return 10_000 * (e + 1) + (strike // 50) * 2


def _inst(iid, token, symbol, itype, expiry, strike=0):
    return Instrument(
        instrument_id=iid,
        instrument_token=token,
        exchange_token=token >> 8,
        exchange="NFO",
        tradingsymbol=symbol,
        name="NIFTY",
        segment="NFO-FUT" if itype == "FUT" else "NFO-OPT",
        instrument_type=itype,
        expiry=expiry,
        strike=Decimal(strike),
        tick_size=Decimal("0.05"),
        lot_size=75,
        freeze_quantity=1800,
        active=True,
    )


def chain_instruments():
    rows = [
        Instrument(
            instrument_id=1,
            instrument_token=CANARY,
            exchange_token=1001,
            exchange="NSE",
            tradingsymbol="NIFTY 50",
            name="NIFTY 50",
            segment="INDICES",
            instrument_type="EQ",
            expiry=NO_EXPIRY,
            strike=Decimal(0),
            tick_size=Decimal("0.05"),
            lot_size=1,
            freeze_quantity=None,
            active=True,
        )
    ]
    iid = 10
    for e, expiry in enumerate((EXP1, EXP2)):
        for strike in STRIKES:
            for kind in ("CE", "PE"):
                token = _ce(e, strike) + (kind == "PE")
                rows.append(_inst(iid, token, f"NIFTY{e}{strike}{kind}", kind, expiry, strike))
                iid += 1
    rows.append(_inst(iid, 99_001, "NIFTY26DECFUT", "FUT", EXP2))
    return rows


@pytest.fixture
def table():
    return table_from_instruments(chain_instruments())


def test_expand_chain_gives_atm_plus_minus_n_and_the_future(table):
    spec = ChainSpec("NIFTY", EXP1, strikes_around_atm=2, mode="full")
    expansion = expand_chain(table, spec, 24_010.0)
    assert expansion.atm_strike == 24_000
    expected = {_ce(0, s) + k for s in range(23_900, 24_101, 50) for k in (0, 1)} | {99_001}
    assert len(expected) == 11
    assert expansion.tokens == dict.fromkeys(expected, "full")
    assert expansion.expiry == EXP1
    # No price and no known ATM: nothing to subscribe.
    assert expand_chain(table, spec, None).tokens == {}


def test_recenter_waits_for_the_hysteresis():
    assert recenter(24_000, 24_049, 50, 0.5) == 24_000
    assert recenter(24_000, 24_051, 50, 0.5) == 24_050
    assert recenter(24_000, 23_951, 50, 0.5) == 24_000
    assert recenter(24_000, 23_949, 50, 0.5) == 23_950
    assert recenter(24_000, 24_026, 50, 0.0) == 24_050
    assert recenter(24_000, 24_310, 50, 0.5) == 24_300
    assert recenter(None, 24_026, 50, 0.5) == 24_050
    with pytest.raises(ValidationError):
        recenter(24_000, 24_000, 0, 0.5)


def test_chain_does_not_flap_around_a_midpoint(table):
    spec = ChainSpec("NIFTY", EXP1, strikes_around_atm=1)
    atm = expand_chain(table, spec, 24_000.0).atm_strike
    for price in (24_020.0, 24_030.0, 24_024.0, 24_049.0, 24_026.0):
        expansion = expand_chain(table, spec, price, current_atm_strike=atm)
        assert expansion.atm_strike == 24_000
    moved = expand_chain(table, spec, 24_060.0, current_atm_strike=atm)
    assert moved.atm_strike == 24_050
    assert _ce(0, 24_100) in moved.tokens and _ce(0, 23_950) not in moved.tokens
    # The stored centre is used when no price is known.
    assert expand_chain(table, spec, None, current_atm_strike=24_100.0).atm_strike == 24_100


def test_chain_rolls_after_expiry(table):
    assert roll_expiry(table, "NIFTY", EXP1, EXP1) == EXP1
    assert roll_expiry(table, "NIFTY", EXP1, EXP1 + dt.timedelta(days=1)) == EXP2
    assert roll_expiry(table, "NIFTY", EXP2, EXP2 + dt.timedelta(days=1)) is None
    spec = ChainSpec("NIFTY", EXP1, strikes_around_atm=0)
    rolled = expand_chain(table, spec, 24_000.0, today=dt.date(2026, 11, 27))
    assert rolled.expiry == EXP2
    assert set(rolled.tokens) == {_ce(1, 24_000), _ce(1, 24_000) + 1, 99_001}
