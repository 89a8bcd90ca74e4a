"""Instrument rows for tests that build a small registry by hand."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from ticker_tasks.db.models import NO_EXPIRY, Instrument


def instrument_row(
    iid: int,
    token: int,
    symbol: str,
    itype: str,
    *,
    exchange: str = "NFO",
    expiry: dt.date = NO_EXPIRY,
    strike: int = 0,
    name: str = "NIFTY",
) -> Instrument:
    """An active instrument; the segment follows the type (EQ, FUT or an option)."""
    return Instrument(
        instrument_id=iid,
        instrument_token=token,
        exchange_token=token >> 8,
        exchange=exchange,
        tradingsymbol=symbol,
        name=name,
        segment=exchange if itype == "EQ" else f"NFO-{'FUT' if itype == 'FUT' else 'OPT'}",
        instrument_type=itype,
        expiry=expiry,
        strike=Decimal(strike),
        tick_size=Decimal("0.05"),
        lot_size=75,
        freeze_quantity=None,
        active=True,
    )
