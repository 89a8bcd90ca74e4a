"""Listing the universe: expiries, strike ladders and sizing to the requested count.

Index chains (NIFTY 50, NIFTY BANK, FINNIFTY) list 4 weekly Tuesday expiries plus the 3
monthly (last Tuesday) ones; stocks list 3 monthly futures and option chains. Strikes are
centred on the underlying's level at the start of the build day; the number of strikes per
side grows until the universe holds at least the requested number of contracts.
"""

from __future__ import annotations

import math
from datetime import date, timedelta

from ticker_tasks.simulator import rng
from ticker_tasks.simulator.catalog import INDICES, STOCKS, UNDERLYINGS
from ticker_tasks.simulator.clock import (
    SESSION_CLOSE_MIN,
    date_of_day,
    day_of_minute,
    day_start_minute,
)
from ticker_tasks.simulator.contracts import KIND_EQ, KIND_FUT, KIND_INDEX, KIND_OPT, ContractSpec
from ticker_tasks.simulator.universe import F64, Universe


def _tuesdays(start: date, count: int) -> list[date]:
    first = start + timedelta(days=(1 - start.weekday()) % 7)
    return [first + timedelta(days=7 * i) for i in range(count)]


def _last_tuesday(year: int, month: int) -> date:
    nxt = date(year + (month == 12), month % 12 + 1, 1)
    last = nxt - timedelta(days=1)
    return last - timedelta(days=(last.weekday() - 1) % 7)


def expiries(today: date, alive_after: date | None = None) -> tuple[list[date], list[date]]:
    """(weekly Tuesdays, monthly last Tuesdays) from ``today``: 4 weeklies, 3 monthlies."""
    alive_after = alive_after or today
    monthly: list[date] = []
    year, month = today.year, today.month
    while len(monthly) < 3:
        candidate = _last_tuesday(year, month)
        if candidate >= alive_after:
            monthly.append(candidate)
        year, month = year + (month == 12), month % 12 + 1
    weekly = [d for d in _tuesdays(alive_after, 5) if d not in monthly][:4]
    return weekly, monthly


def _strikes(atm: float, step: float, per_side: int) -> list[float]:
    centre = round(atm / step) * step
    return [centre + k * step for k in range(-per_side, per_side + 1) if centre + k * step > 0]


def _plan(size: int, n_index_expiries: int) -> tuple[int, int]:
    """Strikes per side for index chains and stock chains so the universe reaches ``size``."""
    fixed = len(INDICES) * 4 + len(STOCKS) * 4
    remaining = max(size - fixed, 0)
    per_stock_level = len(STOCKS) * 3 * 2
    per_index_level = len(INDICES) * n_index_expiries * 2
    stock_side = max(2, math.ceil((0.35 * remaining / per_stock_level - 1) / 2))
    stock_side = min(stock_side, 30)
    index_budget = remaining - per_stock_level * (2 * stock_side + 1)
    index_side = max(5, math.ceil((index_budget / per_index_level - 1) / 2))
    return index_side, stock_side


def build_universe(seed: int, size: int, now_minute: int, atm: F64) -> Universe:
    """Build the universe listed at ``now_minute``.

    Args:
        seed: Model seed.
        size: Minimum number of listed contracts.
        now_minute: Epoch minute of the build (expiries already past are skipped).
        atm: Level of each underlying (order of :data:`UNDERLYINGS`) to centre strikes on.

    Returns:
        The universe; it has at least ``size`` listed contracts.
    """
    day = day_of_minute(now_minute)
    today = date_of_day(day)
    universe = Universe(seed_key=rng.seed_key(seed), build_day=day, atm=atm)
    alive = (
        today if now_minute < day_start_minute(day) + SESSION_CLOSE_MIN else today + timedelta(1)
    )
    weekly, monthly = expiries(today, alive)
    index_expiries = sorted(set(weekly) | set(monthly))
    index_side, stock_side = _plan(size, len(index_expiries))
    _list_cash_and_futures(universe, monthly)
    while True:
        _list_chains(universe, weekly, monthly, index_expiries, index_side, stock_side)
        if universe.active_count() >= size:
            return universe
        deficit = size - universe.active_count()
        index_side += max(1, math.ceil(deficit / (len(INDICES) * len(index_expiries) * 4)))


def _list_cash_and_futures(universe: Universe, monthly: list[date]) -> None:
    for path, under in enumerate(UNDERLYINGS):
        universe.add(ContractSpec(path, KIND_INDEX if under.is_index else KIND_EQ))
    for path in range(len(UNDERLYINGS)):
        for expiry in monthly:
            universe.add(ContractSpec(path, KIND_FUT, expiry))


def _list_chains(
    universe: Universe,
    weekly: list[date],
    monthly: list[date],
    index_expiries: list[date],
    index_side: int,
    stock_side: int,
) -> None:
    """Add every missing option of the chains (idempotent: listed symbols are skipped)."""
    for path, under in enumerate(UNDERLYINGS):
        side = index_side if under.is_index else stock_side
        chain = index_expiries if under.is_index else monthly
        for expiry in chain:
            for strike in _strikes(float(universe.atm[path]), under.strike_step, side):
                for is_call in (True, False):
                    spec = ContractSpec(path, KIND_OPT, expiry, strike, is_call, expiry in monthly)
                    if not universe.has_symbol("NFO", universe.symbol_of(spec)):
                        universe.add(spec)
    del weekly
