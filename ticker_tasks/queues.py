"""Queues, the task-name namespaces routed to them, and the worker pool of each.

One worker pool per queue: each queue's work has its own shape (many tiny idempotent tick
batches, CPU-bound greeks, rate-limited orders and backfill chunks, rare maintenance jobs), so
each pool gets its own concurrency and prefetch.
"""

from __future__ import annotations

from dataclasses import dataclass

from ticker_tasks.settings import Settings

TICKS = "ticks"
GREEKS = "greeks"
ORDERS = "orders"
BACKFILL = "backfill"
MAINTENANCE = "maintenance"

QUEUES: tuple[str, ...] = (TICKS, GREEKS, ORDERS, BACKFILL, MAINTENANCE)

#: Task-name namespace -> queue. Task names are explicit and public, so routing by name is
#: stable when modules move.
ROUTES: dict[str, str] = {
    "ticker_tasks.ticks.*": TICKS,
    "ticker_tasks.bars.*": TICKS,
    "ticker_tasks.greeks.*": GREEKS,
    "ticker_tasks.orders.*": ORDERS,
    "ticker_tasks.backfill.*": BACKFILL,
    "ticker_tasks.instruments.*": MAINTENANCE,
    "ticker_tasks.maintenance.*": MAINTENANCE,
    "ticker_tasks.subscriptions.*": MAINTENANCE,
    # Spends the historical request budget, like backfill chunks.
    "ticker_tasks.candles.check_completeness": BACKFILL,
    "ticker_tasks.candles.*": MAINTENANCE,
}


@dataclass(frozen=True)
class PoolSpec:
    """How the worker consuming one queue is run."""

    queue: str
    concurrency: int
    prefetch_multiplier: int


def pool_specs(settings: Settings) -> dict[str, PoolSpec]:
    """The worker pool of every queue, from Settings."""
    return {
        TICKS: PoolSpec(TICKS, settings.pool_ticks_concurrency, settings.pool_ticks_prefetch),
        GREEKS: PoolSpec(GREEKS, settings.pool_greeks_concurrency, 1),
        ORDERS: PoolSpec(ORDERS, settings.pool_orders_concurrency, 1),
        BACKFILL: PoolSpec(BACKFILL, settings.pool_backfill_concurrency, 1),
        MAINTENANCE: PoolSpec(MAINTENANCE, settings.pool_maintenance_concurrency, 1),
    }
