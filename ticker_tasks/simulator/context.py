"""The simulator's components, built once per run and shared by the servers."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import numpy as np
from aiohttp import web

from ticker_tasks.simulator.auth import Accounts
from ticker_tasks.simulator.catalog import UNDERLYINGS
from ticker_tasks.simulator.clock import MarketClock, day_of_minute, day_start_minute
from ticker_tasks.simulator.config import SimulatorConfig
from ticker_tasks.simulator.faults import Faults
from ticker_tasks.simulator.listing import build_universe
from ticker_tasks.simulator.market import MarketModel, path_keys, path_levels
from ticker_tasks.simulator.orders import OrderBook
from ticker_tasks.simulator.ratelimit import RateLimiter
from ticker_tasks.simulator.rng import seed_key
from ticker_tasks.simulator.state import MarketState
from ticker_tasks.simulator.universe import Universe
from ticker_tasks.simulator.ws import TickerHub


@dataclass(slots=True)
class StreamStats:
    """Counters of the streamer loop."""

    slots_processed: int = 0
    slots_skipped: int = 0
    last_slot: int = 0
    max_lag_s: float = 0.0
    errors: int = 0
    expired_tokens: list[int] = field(default_factory=list)


@dataclass(slots=True)
class SimContext:
    """Everything a request handler or the streamer needs."""

    config: SimulatorConfig
    clock: MarketClock
    universe: Universe
    model: MarketModel
    state: MarketState
    orders: OrderBook
    accounts: Accounts
    limiter: RateLimiter
    faults: Faults
    hub: TickerHub
    stream: StreamStats
    started_at: float


CONTEXT: Final = web.AppKey("ticker_tasks.simulator", SimContext)


def build_context(
    config: SimulatorConfig, time_source: Callable[[], float] = time.time
) -> SimContext:
    """Build the universe, model, state and services of a run.

    Args:
        config: Simulator options.
        time_source: Wall clock (epoch seconds).

    Returns:
        The context; the market state starts at the current slot.
    """
    clock = MarketClock(config.slots_per_minute, config.follow_calendar, time_source)
    now = clock.now()
    minute = int(now // 60)
    day_start = day_start_minute(day_of_minute(minute))
    keys = path_keys(seed_key(config.seed))
    paths = np.arange(len(UNDERLYINGS), dtype=np.int64)
    atm = path_levels(keys, paths, np.array([day_start], dtype=np.int64))[:, 0]
    universe = build_universe(config.seed, config.universe_size, minute, atm)
    model = MarketModel(universe, clock)
    state = MarketState(model, clock.slot_at(now) - 1)
    accounts = Accounts(config.accounts)
    orders = OrderBook(state, accounts.by_key(), config.price_band_pct, config.opening_balance)
    hub = TickerHub(config, accounts, state)
    orders.notify = hub.broadcast_order
    return SimContext(
        config=config,
        clock=clock,
        universe=universe,
        model=model,
        state=state,
        orders=orders,
        accounts=accounts,
        limiter=RateLimiter(config.rate_limits),
        faults=Faults(),
        hub=hub,
        stream=StreamStats(),
        started_at=now,
    )
