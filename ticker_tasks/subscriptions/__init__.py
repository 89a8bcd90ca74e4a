"""Desired market-data subscriptions and their plan over accounts and ticker connections.

* :mod:`ticker_tasks.subscriptions.plan`: the pure planner (capacity, canaries, minimal churn,
  diffs) and the expansion of option-chain subscriptions around ATM (hysteresis, roll).
* :mod:`ticker_tasks.subscriptions.store`: the desired set in the database and the Redis
  notification that it changed.
"""

from __future__ import annotations

from ticker_tasks.subscriptions.plan import (
    CANARY_MODE,
    MODES,
    AccountCapacity,
    ChainExpansion,
    ChainSpec,
    ConnectionDiff,
    ConnectionKey,
    Plan,
    expand_chain,
    plan_subscriptions,
    recenter,
    roll_expiry,
)

__all__ = [
    "CANARY_MODE",
    "MODES",
    "AccountCapacity",
    "ChainExpansion",
    "ChainSpec",
    "ConnectionDiff",
    "ConnectionKey",
    "Plan",
    "expand_chain",
    "plan_subscriptions",
    "recenter",
    "roll_expiry",
]
