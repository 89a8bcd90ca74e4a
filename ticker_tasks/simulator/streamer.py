"""The market loop: advance the trade path slot by slot on the wall clock and fan out ticks.

At the start of every slot the loop applies the slot's trades to the live state, lists
contract expiries, checks working orders and queues one frame per ticker connection. After a
stall it replays missed slots (up to ``max_catch_up_slots``) so that a connection still gets
every trade; beyond that it skips ahead and recomputes the state lazily.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ticker_tasks.simulator.clock import day_of_minute
from ticker_tasks.simulator.context import SimContext

log = logging.getLogger(__name__)


class Streamer:
    """Runs the market loop of a context until stopped.

    Args:
        ctx: The simulator context.
    """

    def __init__(self, ctx: SimContext) -> None:
        self.ctx = ctx
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """Ask the loop to end (it ends within one slot)."""
        self._stop.set()

    async def run(self) -> None:
        """Advance slots until :meth:`stop`."""
        ctx = self.ctx
        clock = ctx.clock
        while not self._stop.is_set():
            now = clock.now()
            target = clock.slot_at(now)
            following = ctx.state.slot + 1
            if target < following:
                delay = max(clock.slot_start(following) - now, 0.001)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=delay)
                continue
            lag = now - clock.slot_start(following)
            ctx.stream.max_lag_s = max(ctx.stream.max_lag_s, lag)
            if target - following > ctx.config.max_catch_up_slots:
                log.warning("streamer fell %d slots behind; skipping ahead", target - following)
                ctx.stream.slots_skipped += target - following
                ctx.state.invalidate()
                ctx.state.slot = target - 1
                ctx.state.day = day_of_minute((target - 1) // clock.slots_per_minute)
                following = target
            for slot in range(following, target + 1):
                try:
                    self.step(slot)
                except Exception:  # loop boundary: log, count, keep the market running
                    log.exception("slot %d failed", slot)
                    ctx.stream.errors += 1
                    ctx.state.slot = max(ctx.state.slot, slot)
            await asyncio.sleep(0)

    def step(self, slot: int) -> None:
        """Process one slot: expiries, trades, orders, ticks."""
        ctx = self.ctx
        minute, in_minute = divmod(slot, ctx.clock.slots_per_minute)
        if in_minute == 0:
            expired = ctx.universe.expire_due(minute)
            if expired:
                ctx.stream.expired_tokens.extend(expired)
        trades = ctx.state.advance(slot)
        ctx.orders.on_slot(trades)
        ctx.hub.fanout(trades)
        ctx.stream.slots_processed += 1
        ctx.stream.last_slot = slot
