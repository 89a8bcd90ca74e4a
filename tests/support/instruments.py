"""Instrument rows for tests that build a small registry by hand."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal

import numpy as np
import redis

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


def publish_registry_with_rows(client: redis.Redis, instruments: Sequence[Instrument]) -> None:
    """Publish a registry version holding the current one plus ``instruments`` (a superset,
    so other tests reading the registry still find theirs)."""
    from ticker_tasks.errors import NotFound
    from ticker_tasks.market.registry import (
        SNAPSHOT_KEY,
        VERSION_KEY,
        RegistryCache,
        _encode,
        columns_from_instruments,
    )

    mine = columns_from_instruments(instruments)
    try:
        base = RegistryCache(client, check_interval_s=0).current()._c
        merged = {k: np.concatenate([base[k], mine[k]]) for k in base}
    except NotFound:
        merged = mine
    version = int(client.incr(VERSION_KEY))
    client.set(SNAPSHOT_KEY.format(version=version), _encode(merged), ex=3600)
