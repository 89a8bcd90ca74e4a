"""The instrument registry: lookups, token reuse, option chains."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import numpy as np
import pytest

from ticker_tasks.db.models import NO_EXPIRY, Instrument
from ticker_tasks.errors import NotFound, ValidationError
from ticker_tasks.market.registry import table_from_instruments

EXP1 = dt.date(2026, 11, 26)
EXP2 = dt.date(2026, 12, 31)


def _inst(
    iid,
    token,
    symbol,
    *,
    exchange="NFO",
    itype="CE",
    expiry=EXP1,
    strike=0,
    name="NIFTY",
    active=True,
    segment="NFO-OPT",
):
    return Instrument(
        instrument_id=iid,
        instrument_token=token,
        exchange_token=token >> 8,
        exchange=exchange,
        tradingsymbol=symbol,
        name=name,
        segment=segment,
        instrument_type=itype,
        expiry=expiry,
        strike=Decimal(strike),
        tick_size=Decimal("0.05"),
        lot_size=75,
        freeze_quantity=1800,
        active=active,
    )


@pytest.fixture
def table():
    rows = [
        _inst(
            1,
            408065,
            "INFY",
            exchange="NSE",
            itype="EQ",
            expiry=NO_EXPIRY,
            name="INFOSYS",
            segment="NSE",
        ),
        _inst(2, 1001, "NIFTY26NOV24000CE", strike=24000),
        _inst(3, 1002, "NIFTY26NOV24000PE", itype="PE", strike=24000),
        _inst(4, 1003, "NIFTY26NOV24050CE", strike=24050),
        _inst(5, 1004, "NIFTY26NOV24050PE", itype="PE", strike=24050),
        _inst(6, 1005, "NIFTY26NOV24100CE", strike=24100),
        _inst(7, 2001, "NIFTY26DECFUT", itype="FUT", expiry=EXP2, segment="NFO-FUT"),
        # An expired contract whose token 1001 was reused by row 2.
        _inst(
            8, 1001, "NIFTY25NOV22000CE", expiry=dt.date(2025, 11, 27), strike=22000, active=False
        ),
    ]
    return table_from_instruments(rows, version=3)


def test_lookup_by_token_and_symbol(table):
    infy = table.by_token(408065)
    assert infy is not None and infy.key == "NSE:INFY" and infy.expiry is None
    assert table.by_symbol("nse:infy").instrument_id == 1
    assert table.by_token(999) is None


def test_reused_token_maps_to_the_current_holder(table):
    assert table.by_token(1001).tradingsymbol == "NIFTY26NOV24000CE"
    expired = table.by_symbol("NFO:NIFTY25NOV22000CE")
    assert expired is not None and not expired.active and expired.instrument_id == 8


def test_resolve_rejects_garbage_and_unknowns(table):
    assert table.resolve("408065").instrument_id == 1
    assert table.resolve("NSE:INFY").instrument_id == 1
    with pytest.raises(NotFound):
        table.resolve("NSE:NOPE")
    with pytest.raises(ValidationError):
        table.resolve("INFY")


def test_vectorized_token_validation(table):
    mask = table.known_tokens(np.array([408065, 5, 1001, 2001], dtype=np.int64))
    assert mask.tolist() == [True, False, True, True]


def test_option_chain_with_future_and_atm_window(table):
    chain = table.chain("NIFTY", EXP1)
    assert chain.strikes.tolist() == [24000.0, 24050.0, 24100.0]
    assert chain.call_tokens.tolist() == [1001, 1003, 1005]
    assert chain.put_tokens.tolist() == [1002, 1004, 0]
    # Weekly options map to the nearest later future.
    assert chain.future_token == 2001
    window = chain.around_atm(24060.0, 0)
    assert window.strikes.tolist() == [24050.0]
    assert sorted(window.tokens().tolist()) == [1003, 1004]
    assert table.expiries("NIFTY") == [EXP1]
