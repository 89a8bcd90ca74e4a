"""Contracts: kinds, the 0.05 tick, contract specs, tradingsymbols and liquidity profiles."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from typing import Final

from ticker_tasks.simulator.catalog import Underlying
from ticker_tasks.simulator.clock import date_of_day
from ticker_tasks.simulator.options import MAX_VOL, MIN_VOL, RISK_FREE_RATE

KIND_INDEX: Final = 0
KIND_EQ: Final = 1
KIND_FUT: Final = 2
KIND_OPT: Final = 3
NEVER: Final = 2**62
TICK: Final = 0.05
TICKS_PER_RUPEE: Final = 20
_MONTHS: Final = (
    "JAN",
    "FEB",
    "MAR",
    "APR",
    "MAY",
    "JUN",
    "JUL",
    "AUG",
    "SEP",
    "OCT",
    "NOV",
    "DEC",
)
_WEEKLY_MONTH: Final = "123456789OND"


@dataclass(frozen=True, slots=True)
class ContractSpec:
    """Everything needed to add one contract row.

    Attributes:
        path: Index of the underlying in :data:`UNDERLYINGS`.
        kind: ``KIND_*``.
        expiry: Expiry date (None for cash and indices).
        strike: Strike (0 unless an option).
        is_call: Call (True) or put; ignored unless an option.
        monthly: Monthly contract (tradingsymbol style, listing period).
        token: Instrument token; None allocates the next NFO token.
    """

    path: int
    kind: int
    expiry: date | None = None
    strike: float = 0.0
    is_call: bool = True
    monthly: bool = True
    token: int | None = None


def _strike_text(strike: float) -> str:
    return str(int(strike)) if float(strike).is_integer() else f"{strike:g}"


def derivative_symbol(under: Underlying, spec: ContractSpec) -> str:
    assert spec.expiry is not None
    expiry = spec.expiry
    if spec.kind == KIND_FUT:
        return f"{under.symbol}{expiry:%y}{_MONTHS[expiry.month - 1]}FUT"
    flag = "CE" if spec.is_call else "PE"
    strike = _strike_text(spec.strike)
    if spec.monthly:
        return f"{under.symbol}{expiry:%y}{_MONTHS[expiry.month - 1]}{strike}{flag}"
    return f"{under.symbol}{expiry:%y}{_WEEKLY_MONTH[expiry.month - 1]}{expiry:%d}{strike}{flag}"


@dataclass(frozen=True, slots=True)
class Liquidity:
    """How a contract trades.

    Attributes:
        share: Mean share of slots with a trade in an active minute.
        p_idle: Chance that a minute has no trade at all.
        noise: Price noise of trades around the reference price (ticks).
        ext_max: Largest excursion of the minute's high/low beyond open/close (ticks).
        extra: Mean extra lots per trade.
        oi_lots: Open interest level in lots (F&O).
    """

    share: float
    p_idle: float
    noise: float
    ext_max: int
    extra: float
    oi_lots: float


def liquidity_profile(
    build_day: int, atm: float, spec: ContractSpec, under: Underlying
) -> Liquidity:
    """(trade share of slots, chance of an idle minute, price noise in ticks, high/low
    excursion in ticks, mean extra lots per trade, OI level in lots) of a new contract."""
    if spec.kind == KIND_INDEX:
        return Liquidity(1.0, 0.0, 1.0, 0, 0.0, 0.0)
    if spec.kind == KIND_EQ:
        return Liquidity(0.45 + 0.4 * (under.exchange_token % 7) / 7.0, 0.0, 1.5, 2, 25.0, 0.0)
    days = _days_to_expiry(build_day, spec)
    if spec.kind == KIND_FUT:
        near = days <= 35
        return Liquidity((0.7 if near else 0.15), (0.0 if near else 0.3), 2.0, 3, 1.5, 3000.0)
    years = max(days, 0.5) / 365.0
    fwd = atm * (1.0 + RISK_FREE_RATE * years)
    x = math.log(spec.strike / fwd)
    vol = min(max(under.atm_vol + under.skew * x + under.curvature * x * x, MIN_VOL), MAX_VOL)
    z = abs(x) / (vol * math.sqrt(years))
    liquidity = max(0.01, 0.6 * math.exp(-0.3 * z * z))
    p_idle = min(0.97, 0.02 + 0.96 * (1.0 - math.exp(-z * z / 6.0)))
    return Liquidity(liquidity, p_idle, 0.0, 1, 2.0, 20.0 + 4000.0 * math.exp(-z * z / 3.0))


def _days_to_expiry(build_day: int, spec: ContractSpec) -> float:
    if spec.expiry is None:
        return 0.0
    return float((spec.expiry - date_of_day(build_day)).days)
